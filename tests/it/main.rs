//! The integration tests: one binary (one link step) with a module per area, and the shared
//! helpers beside them: `common` (the `pibake` binary, fixtures, e2fsck/debugfs/mtools
//! wrappers), `common_http` (a 127.0.0.1 server with fault injection) and `output_common`
//! (small synthetic images for the output formats).

mod common;
mod common_http;
mod output_common;

mod acquire_download;
mod acquire_local;
mod acquire_oslist;
mod acquire_proxy;
mod acquire_signature;
mod bad_input;
mod build_master;
mod build_outputs;
mod build_routes;
mod build_worker;
mod cache_shared;
mod cluster_build;
mod cluster_plan;
mod fs_edits;
mod fs_gates;
mod fuzz_corpus;
mod hostile;
mod identity;
mod inspect_cli;
mod kill_anywhere;
mod output_bmap;
mod output_flash;
mod output_formats;
mod secrets;
mod xz_patch;
