//! Shared fixtures for the integration tests (network namespaces, the agent, the plugin).
