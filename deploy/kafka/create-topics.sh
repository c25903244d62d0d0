#!/usr/bin/env bash
# Create tracewatch's Kafka topics with the partitions and retention production needs.
#
#   TRACEWATCH_KAFKA=broker1:9092 deploy/kafka/create-topics.sh
#
# Safe to run again: a topic that exists is left in place (--if-not-exists) and only its
# retention.ms / cleanup.policy / min.insync.replicas are set again to the values below.
# Partitions are never changed here: adding partitions to a keyed topic moves keys to other
# partitions, so it is an operator's decision (see deploy/README.md).
#
# Environment:
#   TRACEWATCH_KAFKA                  bootstrap servers          [localhost:9092]
#   TRACEWATCH_TOPIC_REPLICATION      replication factor          [3; 1 for a single broker]
#   TRACEWATCH_KAFKA_CLIENT_CONFIG    --command-config file for TLS/SASL clusters  [none]
#   KAFKA_TOPICS, KAFKA_CONFIGS       the Kafka CLI tools  [kafka-topics.sh / kafka-configs.sh
#                                     on PATH, else /opt/kafka/bin/]
set -euo pipefail

BOOTSTRAP="${TRACEWATCH_KAFKA:-localhost:9092}"
REPLICATION="${TRACEWATCH_TOPIC_REPLICATION:-3}"
CLIENT_CONFIG="${TRACEWATCH_KAFKA_CLIENT_CONFIG:-}"

DAY_MS=86400000

# topic                   partitions  retention.ms        role
TOPICS=(
  "tracewatch.events      12 $((7 * DAY_MS))    input: NHSA messages from the platform"
  "tracewatch.codes       12 $((1 * DAY_MS))    internal: per-code events, keyed by code"
  "tracewatch.persons     12 $((1 * DAY_MS))    internal: per-person events, keyed by person hash"
  "tracewatch.alerts      12 $((90 * DAY_MS))   output: alerts, keyed by alert_id"
  "tracewatch.events.dlq   3 $((30 * DAY_MS))   dead letters: bad input, reason in a header"
)

find_tool() {
  local name="$1" override="$2"
  if [[ -n "$override" ]]; then
    echo "$override"
  elif command -v "$name" >/dev/null 2>&1; then
    echo "$name"
  elif [[ -x "/opt/kafka/bin/$name" ]]; then
    echo "/opt/kafka/bin/$name"
  else
    echo "create-topics.sh: $name not found; put Kafka's bin/ on PATH or set ${3}" >&2
    return 1
  fi
}

KAFKA_TOPICS_CMD="$(find_tool kafka-topics.sh "${KAFKA_TOPICS:-}" KAFKA_TOPICS)"
KAFKA_CONFIGS_CMD="$(find_tool kafka-configs.sh "${KAFKA_CONFIGS:-}" KAFKA_CONFIGS)"

if ! [[ "$REPLICATION" =~ ^[1-9][0-9]*$ ]]; then
  echo "create-topics.sh: TRACEWATCH_TOPIC_REPLICATION=$REPLICATION is not a positive number" >&2
  exit 2
fi
# With 3 or more replicas a write is acknowledged by 2 of them (acks=all), so one broker may
# fail without losing an acknowledged message; with fewer there is nothing to require.
if ((REPLICATION >= 3)); then MIN_ISR=2; else MIN_ISR=1; fi

COMMON=(--bootstrap-server "$BOOTSTRAP")
if [[ -n "$CLIENT_CONFIG" ]]; then
  COMMON+=(--command-config "$CLIENT_CONFIG")
fi

for line in "${TOPICS[@]}"; do
  read -r topic partitions retention_ms _role <<<"$line"
  configs="cleanup.policy=delete,retention.ms=${retention_ms},min.insync.replicas=${MIN_ISR}"
  echo "topic ${topic}: ${partitions} partitions, replication ${REPLICATION}, ${configs}"
  create_configs=()
  for config in ${configs//,/ }; do
    create_configs+=(--config "$config")
  done
  "$KAFKA_TOPICS_CMD" "${COMMON[@]}" --create --if-not-exists --topic "$topic" \
    --partitions "$partitions" --replication-factor "$REPLICATION" "${create_configs[@]}"
  "$KAFKA_CONFIGS_CMD" "${COMMON[@]}" --alter --entity-type topics --entity-name "$topic" \
    --add-config "$configs"
done

echo "tracewatch topics ready on ${BOOTSTRAP}"
