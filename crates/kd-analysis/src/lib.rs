//! kd-analysis: what turns results rows into findings. Grouped comparisons with paired tests
//! (`compare`), paper tables and plots (`report`, `heatmap`), BibTeX for a configuration
//! (`cite`), the statistics they share (`stats`) and the sweep configurations file
//! (`configs`). It reads results and recipes; it trains nothing.

pub mod cite;
pub mod compare;
pub mod configs;
pub mod heatmap;
pub mod report;
pub mod stats;
