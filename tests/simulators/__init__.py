"""Tests of the simulators (callsim): each peer against its protocol, without the gateway."""
