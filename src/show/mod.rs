//! `pipe show`, read-only typed views of the store: the runs and sweeps list (`runs`), one run's
//! DAG (`summary`) and an artifact's lineage (`lineage`). `--json` prints these types.

mod lineage;
mod runs;
mod summary;

pub use lineage::Lineage;
pub use runs::{RunsList, SweepListing, fmt_duration};
pub use summary::{print_summary, run_summary};
