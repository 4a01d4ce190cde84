//! LLM prompt context from contacts (being written).
