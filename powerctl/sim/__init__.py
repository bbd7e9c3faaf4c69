"""Simulated BMCs, PDUs and Redfish services for tests, benches and the demo."""
