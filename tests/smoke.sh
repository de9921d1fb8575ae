#!/usr/bin/env bash
# Runs the real binary as a newcomer would: `corvus dev` on embedded storage, then
# grpcurl through server reflection and health, `corvus send` with a JSON-lines file,
# and curl on the Segment HTTP API. Usage: tests/smoke.sh [path/to/corvus]
# Outputs are captured before grep: `grep -q` in a pipe would end the writer with
# SIGPIPE, which pipefail reports as a failure.
set -euo pipefail
bin=${1:-target/debug/corvus}
dir=$(mktemp -d)
trap 'kill "${pid:-}" 2>/dev/null || true; rm -rf "$dir"' EXIT
fail() { echo "smoke: $*"; exit 1; }

CORVUS_SERVER__METRICS_ADDR=127.0.0.1:0 "$bin" dev --data-dir "$dir/data" \
  --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 >"$dir/out" 2>"$dir/err" &
pid=$!
for _ in $(seq 100); do grep -q 'admin key' "$dir/out" 2>/dev/null && break; sleep 0.1; done
grpc=$(awk '/gRPC/ {sub("http://", "", $2); print $2}' "$dir/out")
http=$(awk '/HTTP/ {print $2}' "$dir/out")
[ -n "$grpc" ] && [ -n "$http" ] || { cat "$dir/out" "$dir/err"; fail "corvus dev did not start"; }
key=$(cat "$dir/data/dev-key")

for _ in $(seq 100); do
  health=$(grpcurl -plaintext -d '{"service": ""}' "$grpc" grpc.health.v1.Health/Check 2>/dev/null || true)
  grep -q '"SERVING"' <<<"$health" && break
  sleep 0.1
done
grep -q '"SERVING"' <<<"$health" || fail "health never said SERVING: $health"

services=$(grpcurl -plaintext "$grpc" list)
grep -qx corvus.ingestion.v1.IngestionService <<<"$services" || fail "reflection lists: $services"
grpcurl -plaintext "$grpc" describe corvus.ingestion.v1.IngestionService.Ingest >/dev/null

cat >"$dir/events.jsonl" <<'JSON'
{"type": "identify", "messageId": "smoke-1", "userId": "u-1", "traits": {"email": "ada@example.com"}}
{"type": "track", "messageId": "smoke-2", "userId": "u-1", "event": "Order Completed", "properties": {"revenue": 42}}
{"type": "page", "messageId": "smoke-3", "anonymousId": "a-1", "name": "Home"}
JSON
sent=$("$bin" send "$dir/events.jsonl" --endpoint "http://$grpc" --key "$key")
grep -q 'accepted 3, duplicates 0, rejected 0' <<<"$sent" || fail "corvus send said: $sent"

posted=$(curl -sf -u "$key:" -H 'content-type: application/json' \
  -d '{"batch": [{"type": "track", "messageId": "smoke-4", "anonymousId": "a-1", "event": "Viewed"}]}' \
  "$http/v1/batch")
grep -q '"accepted":1' <<<"$posted" || fail "/v1/batch said: $posted"

events=$(grpcurl -plaintext -H "authorization: Bearer $key" -d '{}' "$grpc" \
  corvus.ingestion.v1.IngestionService/ListEvents)
listed=$(grep -c '"messageId"' <<<"$events" || true)
[ "$listed" = 4 ] || fail "expected 4 stored events, found $listed"

# Identity resolved the events onto one profile.
for _ in $(seq 100); do
  profile=$(grpcurl -plaintext -H "authorization: Bearer $key" \
    -d '{"identifier": {"kind": "user_id", "value": "u-1"}}' "$grpc" \
    corvus.identity.v1.IdentityService/GetProfile 2>/dev/null || true)
  grep -q '"eventCount": "2"' <<<"$profile" && break
  sleep 0.1
done
grep -q '"eventCount": "2"' <<<"$profile" || fail "GetProfile said: $profile"

# Scoring holds the order on the same profile; a model wants more data than this.
profile_id=$(sed -n 's/.*"profileId": "\([^"]*\)".*/\1/p' <<<"$profile" | head -1)
for _ in $(seq 100); do
  scores=$(grpcurl -plaintext -H "authorization: Bearer $key" -d "{\"profile_id\": \"$profile_id\"}" "$grpc" \
    corvus.scoring.v1.ScoringService/GetScores 2>/dev/null || true)
  grep -q '"revenue": 42' <<<"$scores" && break
  sleep 0.1
done
grep -q '"revenue": 42' <<<"$scores" || fail "GetScores said: $scores"
fit=$("$bin" models fit clv --endpoint "http://$grpc" --key "$key" 2>&1 || true)
grep -q 'needs at least 20 customers; the data holds 1' <<<"$fit" || fail "corvus models fit said: $fit"

# An audience of buyers in the last 30 days, applied from a file, takes the profile in.
cat > "$dir/audiences.json" <<'JSON'
{"audiences": [{"name": "buyers",
  "definition": {"event": {"filter": {"events": ["Order Completed"]}, "within_seconds": 2592000, "at_least": 1}}}]}
JSON
applied=$("$bin" audiences apply "$dir/audiences.json" --endpoint "http://$grpc" --key "$key" 2>&1 || true)
grep -q 'applied: 1 created' <<<"$applied" || fail "corvus audiences apply said: $applied"
for _ in $(seq 100); do
  members=$(grpcurl -plaintext -H "authorization: Bearer $key" -d '{"name": "buyers"}' "$grpc" \
    corvus.scoring.v1.ScoringService/ListAudienceMembers 2>/dev/null || true)
  grep -q "$profile_id" <<<"$members" && break
  sleep 0.1
done
grep -q "$profile_id" <<<"$members" || fail "ListAudienceMembers said: $members"
# The profile carries the audience, asked of scoring in the same call.
with_scores=$(grpcurl -plaintext -H "authorization: Bearer $key" \
  -d "{\"profile_id\": \"$profile_id\", \"include_scores\": true}" "$grpc" \
  corvus.identity.v1.IdentityService/GetProfile 2>&1 || true)
grep -q '"buyers"' <<<"$with_scores" || fail "GetProfile with include_scores said: $with_scores"

# A campaign for the buyers, applied from a file and launched; Decide picks it for the
# person by identifier, on the web (no consent purpose asked, no quiet hours there).
cat > "$dir/campaigns.json" <<'JSON'
{"campaigns": [{"name": "thanks", "audience": "buyers",
  "actions": [{"name": "banner", "subject": "Thanks, {{traits.email|friend}}"}],
  "channels": ["web"]}]}
JSON
launched=$("$bin" campaigns apply "$dir/campaigns.json" --launch --endpoint "http://$grpc" --key "$key" 2>&1 || true)
grep -q 'live thanks' <<<"$launched" || fail "corvus campaigns apply said: $launched"
decided=$(grpcurl -plaintext -H "authorization: Bearer $key" \
  -d '{"identifier": {"kind": "user_id", "value": "u-1"}, "placement": "home"}' "$grpc" \
  corvus.orchestration.v1.OrchestrationService/Decide 2>&1 || true)
grep -q '"subject": "Thanks, ada@example.com"' <<<"$decided" || fail "Decide said: $decided"
# Measurement took the decision, from orchestration's log, as an exposure of the
# campaign's experiment.
for _ in $(seq 100); do
  experiments=$(grpcurl -plaintext -H "authorization: Bearer $key" -d '{}' "$grpc" \
    corvus.measurement.v1.MeasurementService/ListExperiments 2>/dev/null || true)
  grep -q '"users": "1"' <<<"$experiments" && break
  sleep 0.1
done
grep -q '"name": "thanks"' <<<"$experiments" && grep -q '"users": "1"' <<<"$experiments" \
  || fail "ListExperiments said: $experiments"
# gbstats' p-value for 10 % against 11 % of 10,000 each: 0.027889528764600602.
analysed=$(grpcurl -plaintext -H "authorization: Bearer $key" -d '{"metrics": [{"metric": "converted",
  "metric_type": "METRIC_TYPE_BINOMIAL", "arms": [{"name": "a", "users": 10000, "sum": 1000},
  {"name": "b", "users": 10000, "sum": 1100}]}], "weights": [0.5, 0.5]}' "$grpc" \
  corvus.measurement.v1.MeasurementService/AnalyzeAggregates 2>&1 || true)
grep -q '"pValue": 0.0278895287' <<<"$analysed" || fail "AnalyzeAggregates said: $analysed"

unauth=$(grpcurl -plaintext -d '{}' "$grpc" corvus.ingestion.v1.IngestionService/ListEvents 2>&1 || true)
grep -q Unauthenticated <<<"$unauth" || fail "a call without a key was not refused: $unauth"

kill -TERM "$pid"
wait "$pid" || fail "corvus dev did not stop cleanly on SIGTERM"
echo "smoke: ok (reflection, health, corvus send, Segment HTTP, ListEvents, GetProfile, GetScores, models fit, audiences apply, scores on the profile, campaigns apply, Decide, ListExperiments, AnalyzeAggregates, auth, graceful stop)"
