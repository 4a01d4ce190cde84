//! Twenty CRM store (work in progress).
