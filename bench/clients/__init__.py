"""How requests are made: the streaming HTTP clients, the Python agents and the Rust agent bridge."""
