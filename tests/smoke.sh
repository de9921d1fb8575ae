#!/usr/bin/env bash
# Runs the real binary as a newcomer would: `corvus dev` on embedded storage, then
# grpcurl through server reflection and health, `corvus send` with a JSON-lines file,
# and curl on the Segment HTTP API. Usage: tests/smoke.sh [path/to/corvus]
set -euo pipefail
bin=${1:-target/debug/corvus}
dir=$(mktemp -d)
trap 'kill "${pid:-}" 2>/dev/null || true; rm -rf "$dir"' EXIT

CORVUS_SERVER__METRICS_ADDR=127.0.0.1:0 "$bin" dev --data-dir "$dir/data" \
  --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 >"$dir/out" 2>"$dir/err" &
pid=$!
for _ in $(seq 100); do grep -q 'admin key' "$dir/out" 2>/dev/null && break; sleep 0.1; done
grpc=$(awk '/gRPC/ {sub("http://", "", $2); print $2}' "$dir/out")
http=$(awk '/HTTP/ {print $2}' "$dir/out")
key=$(cat "$dir/data/dev-key")
[ -n "$grpc" ] && [ -n "$http" ] || { cat "$dir/out" "$dir/err"; echo "smoke: corvus dev did not start"; exit 1; }

for _ in $(seq 100); do
  grpcurl -plaintext -d '{"service": ""}' "$grpc" grpc.health.v1.Health/Check 2>/dev/null | grep -q SERVING && break
  sleep 0.1
done
grpcurl -plaintext "$grpc" list | grep -qx corvus.ingestion.v1.IngestionService
grpcurl -plaintext "$grpc" describe corvus.ingestion.v1.IngestionService.Ingest >/dev/null

cat >"$dir/events.jsonl" <<'JSON'
{"type": "identify", "messageId": "smoke-1", "userId": "u-1", "traits": {"email": "ada@example.com"}}
{"type": "track", "messageId": "smoke-2", "userId": "u-1", "event": "Order Completed", "properties": {"revenue": 42}}
{"type": "page", "messageId": "smoke-3", "anonymousId": "a-1", "name": "Home"}
JSON
"$bin" send "$dir/events.jsonl" --endpoint "http://$grpc" --key "$key" | grep -q 'accepted 3, duplicates 0, rejected 0'

curl -sf -u "$key:" -H 'content-type: application/json' \
  -d '{"batch": [{"type": "track", "messageId": "smoke-4", "anonymousId": "a-1", "event": "Viewed"}]}' \
  "$http/v1/batch" | grep -q '"accepted":1'

listed=$(grpcurl -plaintext -H "authorization: Bearer $key" -d '{}' "$grpc" \
  corvus.ingestion.v1.IngestionService/ListEvents | grep -c '"messageId"')
[ "$listed" = 4 ] || { echo "smoke: expected 4 stored events, found $listed"; exit 1; }

unauth=$(grpcurl -plaintext -d '{}' "$grpc" corvus.ingestion.v1.IngestionService/ListEvents 2>&1 || true)
grep -q Unauthenticated <<<"$unauth" || { echo "smoke: a call without a key was not refused: $unauth"; exit 1; }

kill -TERM "$pid"; wait "$pid"
echo "smoke: ok (reflection, health, corvus send, Segment HTTP, ListEvents, auth, graceful stop)"
