"""The Pulumi programs: one component per cloud, sharing the spec (infra/__main__.py wires them)."""
