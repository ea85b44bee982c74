"""Helpers of the sslwrap compat suite: hosts, backends, superservers and clients for the documented deployment lines."""
