"""Programs that run apart from a study: the loopback test server and the model replica builder."""
