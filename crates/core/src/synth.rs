//! Synthetic, realistic contacts (being written).
