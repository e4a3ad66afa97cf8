"""The test network: namespaces, links, a delay relay, and measurement accuracy against the truth."""
