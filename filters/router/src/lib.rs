//! router filter
