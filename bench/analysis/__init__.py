"""From stored runs to tables: the Results, derived tables, findings, prefill and tail statistics."""
