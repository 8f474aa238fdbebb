//! DistribuSync client library (placeholder until the Files client lands).
