//! The mock LLM provider (see the module files).
