#!/bin/bash
# Startup script of a spot-training VM (Compute Engine), installed by
# ComputeEngineSpotBackend as the instance's `startup-script` metadata.
#
# The contract, read from instance metadata (all set by the backend):
#   spot-training-command  the training command line, run with `bash -c`
#   spot-training-env      a JSON object of environment variables for the training:
#                          SPOT_TRAINING_CHECKPOINT_URI (gs://... checkpoint prefix),
#                          SPOT_TRAINING_ATTEMPT, SPOT_TRAINING_CAPACITY,
#                          SPOT_TRAINING_PREEMPTIONS, SPOT_TRAINING_RUN_KEY,
#                          SPOT_TRAINING_RESULT_URI, plus the backend's `env`
#   spot-training-self-delete  "true": delete this VM when the training ends
#
# What it does:
#   1. runs the command with that environment, forwarding SIGTERM (the 30 s
#      preemption notice, or a shutdown) so the training can commit a checkpoint;
#   2. when the command ends, unless the VM was preempted, writes the result
#      record {"exit_code", "attempt", "token", "zone", "instance", "finished_at"} to
#      SPOT_TRAINING_RESULT_URI (<prefix>/_results/attempt-N.json) with a single
#      PUT through the Cloud Storage JSON API;
#   3. deletes the VM through the Compute Engine API.
# It needs curl and python3 (present on Google's public images), and the VM's
# service account needs storage.objects.create on the bucket and
# compute.instances.delete on itself (see docs/backends/gcp.md).
#
# Secrets: SPOT_TRAINING_SECRETS (a JSON object {NAME: "projects/P/secrets/S[/versions/V]"})
# is resolved through the Secret Manager API before the training starts; the values never
# appear in the VM's metadata.
#
# Endpoints can be overridden for tests: SPOT_TRAINING_METADATA_URL,
# SPOT_TRAINING_STORAGE_URL, SPOT_TRAINING_COMPUTE_URL, SPOT_TRAINING_SECRETS_URL.
set -u

METADATA_URL="${SPOT_TRAINING_METADATA_URL:-http://metadata.google.internal}"
STORAGE_URL="${SPOT_TRAINING_STORAGE_URL:-https://storage.googleapis.com}"
COMPUTE_URL="${SPOT_TRAINING_COMPUTE_URL:-https://compute.googleapis.com}"
SECRETS_URL="${SPOT_TRAINING_SECRETS_URL:-https://secretmanager.googleapis.com}"

md() { curl -sf -H "Metadata-Flavor: Google" "$METADATA_URL/computeMetadata/v1/$1"; }
token() { md "instance/service-accounts/default/token" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'; }
log() { echo "spot-training: $*"; logger -t spot-training "$*" 2>/dev/null || true; }

COMMAND="$(md instance/attributes/spot-training-command)" || { log "no spot-training-command metadata"; exit 1; }
ENV_JSON="$(md instance/attributes/spot-training-env || echo '{}')"
SELF_DELETE="$(md instance/attributes/spot-training-self-delete || echo true)"
NAME="$(md instance/name)"
ZONE="$(md instance/zone)"; ZONE="${ZONE##*/}"
PROJECT="$(md project/project-id)"

# export the contract: names are checked (the backend refuses bad ones too), values quoted
eval "$(printf '%s' "$ENV_JSON" | python3 -c '
import json, re, shlex, sys
for k, v in json.load(sys.stdin).items():
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
        sys.exit(f"spot-training: refusing the environment variable name {k!r}")
    print(f"export {k}={shlex.quote(str(v))}")
')" || { log "the spot-training-env metadata is malformed"; exit 1; }

# secrets: SPOT_TRAINING_SECRETS maps names to Secret Manager versions; only references
# travel in the metadata, the values are read here with the VM's service account
SECRET_EXPORTS="$(printf '%s' "${SPOT_TRAINING_SECRETS:-}" | python3 -c '
import base64, json, re, shlex, sys, urllib.request
refs = json.loads(sys.stdin.read() or "{}")
if refs:
    token = sys.argv[1]
    for name, ref in refs.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            sys.exit(f"spot-training: refusing the secret name {name!r}")
        version = ref if "/versions/" in ref else ref.rstrip("/") + "/versions/latest"
        req = urllib.request.Request(f"{sys.argv[2]}/v1/{version}:access", headers={"Authorization": f"Bearer {token}"})
        data = json.load(urllib.request.urlopen(req, timeout=30))["payload"]["data"]
        print(f"export {name}={shlex.quote(base64.b64decode(data).decode())}")
' "$( [ -n "${SPOT_TRAINING_SECRETS:-}" ] && token || true )" "$SECRETS_URL")" \
  || { log "could not read the secrets in SPOT_TRAINING_SECRETS (the VM's service account needs roles/secretmanager.secretAccessor)"; exit 1; }
eval "$SECRET_EXPORTS"

delete_self() {
  [ "$SELF_DELETE" = "true" ] || return 0
  log "deleting instance $NAME in $ZONE"
  curl -sf -X DELETE -H "Authorization: Bearer $(token)" \
    "$COMPUTE_URL/compute/v1/projects/$PROJECT/zones/$ZONE/instances/$NAME" >/dev/null \
    || log "could not delete myself; the backend deletes the VM once it reads the result record"
}

write_result() {  # $1: exit code
  local body uri bucket object
  body="$(printf '{"exit_code": %d, "attempt": %s, "token": "%s", "zone": "%s", "instance": "%s", "finished_at": %s}' \
    "$1" "${SPOT_TRAINING_ATTEMPT:-0}" "${SPOT_TRAINING_TOKEN:-}" "$ZONE" "$NAME" "$(date +%s)")"
  uri="${SPOT_TRAINING_RESULT_URI:?}"
  case "$uri" in
    gs://*)
      bucket="${uri#gs://}"; object="${bucket#*/}"; bucket="${bucket%%/*}"
      object="$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$object")"
      curl -sf -X POST -H "Authorization: Bearer $(token)" -H "Content-Type: application/json" \
        --data-binary "$body" "$STORAGE_URL/upload/storage/v1/b/$bucket/o?uploadType=media&name=$object" >/dev/null ;;
    *)  # a path on a shared file system, or any fsspec URL the image can write to
      python3 - "$uri" "$body" <<'PY'
import sys, fsspec
fs, path = fsspec.core.url_to_fs(sys.argv[1])
fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
fs.pipe_file(path, sys.argv[2].encode())
PY
      ;;
  esac
}

log "attempt ${SPOT_TRAINING_ATTEMPT:-?} on ${SPOT_TRAINING_CAPACITY:-?} capacity, checkpoints under ${SPOT_TRAINING_CHECKPOINT_URI:-?}"
bash -c "$COMMAND" &
CHILD=$!
trap 'log "SIGTERM: passing the notice to the training"; kill -TERM "$CHILD" 2>/dev/null' TERM
wait "$CHILD"; CODE=$?
# `wait` returns early when a trapped signal arrives: wait for the training itself
while kill -0 "$CHILD" 2>/dev/null; do wait "$CHILD"; CODE=$?; done

if [ "$(md instance/preempted || echo FALSE)" = "TRUE" ]; then
  log "preempted; no result record (the backend counts the preemption from the zone operation)"
  exit 0
fi
log "training exited with code $CODE"
write_result "$CODE" || log "could not write the result record to $SPOT_TRAINING_RESULT_URI"
delete_self
exit 0
