"""`jr-eval report | gate | cells`: registered on the jr-eval group by ``register``."""


def register(group) -> None:
    """Add the report, gate and cells commands to the ``jr-eval`` click group."""
