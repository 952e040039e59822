"""What the benchmarks that run a local stack share: its bakery.yaml."""

from __future__ import annotations


def stack_config(p: int, trivy: str, jobs: int) -> str:
    """bakery.yaml for a bench stack on ports p (mirror) .. p+3 (prod)."""
    return (f"environments:\n  dev: {{registry: '127.0.0.1:{p + 1}/bench'}}\n"
            f"  staging: {{registry: '127.0.0.1:{p + 2}/bench'}}\n  prod: {{registry: '127.0.0.1:{p + 3}/bench'}}\n"
            f"mirrors: {{docker.io: '127.0.0.1:{p}'}}\n"
            f"dev_stack: {{ports: {{mirror: {p}, dev: {p + 1}, staging: {p + 2}, prod: {p + 3}}}}}\n"
            f"scanner: {{trivy: '{trivy}'}}\nbuild: {{jobs: {jobs}}}\n")
