# Shared by the fake Slurm commands (tests/slurm.rs). State lives in $FAKE_SLURM_DIR:
#   next_id            the last job id handed out
#   jobs/<id>/state    PENDING, RUNNING, COMPLETED, FAILED or CANCELLED (absent: a "lost" job)
#   jobs/<id>/pgid     the process group running the job, for scancel
#   sbatch.log         one line per sbatch call: "<id> <job name>"
#   scancel.log        one line per cancelled id
# Knobs: FAKE_SLURM_FAIL=<job name> fails that job (exit 1, without running it);
# FAKE_SLURM_LOST=<job name>: sbatch prints an id that squeue and sacct never know;
# FAKE_SLURM_HOLD=<job name>: held PENDING until $FAKE_SLURM_DIR/release exists.
set -euo pipefail
: "${FAKE_SLURM_DIR:?FAKE_SLURM_DIR must be set}"
mkdir -p "$FAKE_SLURM_DIR/jobs"

state_of() {
    cat "$FAKE_SLURM_DIR/jobs/$1/state" 2>/dev/null || true
}

set_state() {
    local f="$FAKE_SLURM_DIR/jobs/$1/state"
    echo "$2" > "$f.tmp.$$"
    mv "$f.tmp.$$" "$f"
}
