//! Harness for tests that run the real binaries: processes, network namespaces, DNS.
