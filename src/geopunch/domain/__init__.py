"""Pure domain: models, rules, error codes and ports. No I/O frameworks here."""
