//! wisp-runtime (in progress)
