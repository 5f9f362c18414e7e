//! The fault proxy (see the module files).
