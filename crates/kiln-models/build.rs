//! No build step: the script exists so that `[build-dependencies]` (feature unification for
//! proc macros, see Cargo.toml) takes part in the build.

fn main() {}
