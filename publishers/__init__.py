"""Channel publishers (curated, throttled availability per channel). Filled by the channel-feeds work."""

__all__: list[str] = []
