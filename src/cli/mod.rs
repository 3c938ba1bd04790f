//! Parts of the `vmq` command line that are not the library's: signal handling, `vmq serve`
//! and its commands, and the driver of `vmq demo --linux`.

pub mod demo_linux;
pub mod serve;
pub mod signals;
