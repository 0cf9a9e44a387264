"""Operations engines behind the CLI: DLQ replay and quarantine review."""
