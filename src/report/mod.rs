//! Reports for people: the drill timeline (a self-contained HTML page with one SVG chart per
//! drill), written by `vigil drill --report-html` and by the fault drills in `tests/drills.rs`.

pub mod timeline;
