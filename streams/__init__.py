"""The stream layer of tracewatch: parsing at the edges, ledgers, Kafka, Redis, web and CLI."""
