"""Tests of the HTTP layer: errors, parameters, operator access, the server."""
