#!/bin/bash
# Submits the stages of pipe run <RUN> to Slurm, each after the jobs it needs.
# Follow it with `pipe show <RUN>`.
set -euo pipefail
cd "$(dirname "$0")"
job0=$(sbatch --parsable '01-data.sbatch')
job0=${job0%%;*}
echo "data: job $job0"
job1=$(sbatch --parsable --dependency=afterok:$job0 --kill-on-invalid-dep=yes '02-model.sbatch')
job1=${job1%%;*}
echo "model: job $job1"
job2=$(sbatch --parsable --dependency=afterok:$job1:$job0 --kill-on-invalid-dep=yes '03-train.sbatch')
job2=${job2%%;*}
echo "train: job $job2"
