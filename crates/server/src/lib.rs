//! DistribuSync server (placeholder until the Files service lands).
