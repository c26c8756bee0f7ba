#!/bin/bash
# airflow-spot-training EC2 bootstrap: rendered once per attempt by EC2SpotBackend.
#
# What it does, in order:
#   1. exports the environment contract (SPOT_TRAINING_*) and the user's extra variables;
#   2. runs the user's command, or the user's container with the same variables;
#   3. writes the attempt's result record {"exit_code", "finished_at", "instance_id", ...}
#      to SPOT_TRAINING_RESULT_URI (under the checkpoint prefix);
#   4. shuts the instance down. The backend launches it with
#      InstanceInitiatedShutdownBehavior=terminate, so shutting down terminates it and
#      the state reason becomes Client.InstanceInitiatedShutdown: "the training ended",
#      success or failure read from the result record.
#
# A spot reclaim terminates the instance from outside (Server.SpotInstanceTermination);
# this script then never reaches step 3, and the backend reports a preemption.
# Training code gets the two-minute notice through
# airflow_spot_training.runtime.interruption.InterruptionWatcher(aws_imds=True).
#
# Placeholders @@NAME@@ are replaced by shell-quoted values when rendering.
#
# Test seams (never set on a real instance; tests run this script with bash as a local
# process against loopback fakes):
#   SPOT_TRAINING_AWS_IMDS_URL     base URL of the instance metadata service (also read by
#                                  InterruptionWatcher(aws_imds=True))
#   SPOT_TRAINING_SHUTDOWN_COMMAND replaces the shutdown command, so the harness can see it
#   SPOT_TRAINING_LOG_FILE         replaces the log file
# Without the AWS CLI on the PATH, s3:// result records are written with python3 + fsspec (s3fs).
set -u

export SPOT_TRAINING_CHECKPOINT_URI=@@CHECKPOINT_URI@@
export SPOT_TRAINING_ATTEMPT=@@ATTEMPT@@
export SPOT_TRAINING_CAPACITY=@@CAPACITY@@
export SPOT_TRAINING_PREEMPTIONS=@@PREEMPTIONS@@
export SPOT_TRAINING_RUN_KEY=@@RUN_KEY@@
export SPOT_TRAINING_RESULT_URI=@@RESULT_URI@@
@@EXTRA_ENV@@
TRAINING_COMMAND=@@COMMAND@@
CONTAINER_IMAGE=@@CONTAINER_IMAGE@@
SHUTDOWN_COMMAND="${SPOT_TRAINING_SHUTDOWN_COMMAND:-}"; [ -n "$SHUTDOWN_COMMAND" ] || SHUTDOWN_COMMAND=@@SHUTDOWN_COMMAND@@
LOG_FILE="${SPOT_TRAINING_LOG_FILE:-}"; [ -n "$LOG_FILE" ] || LOG_FILE=@@LOG_FILE@@
IMDS_URL="${SPOT_TRAINING_AWS_IMDS_URL:-http://169.254.169.254}"

log() { echo "[spot-training] $(date -u +%Y-%m-%dT%H:%M:%SZ) $*" | tee -a "$LOG_FILE" >&2; }

instance_id() {
  local token
  token=$(curl -sf -m 2 -X PUT "$IMDS_URL/latest/api/token" \
          -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' 2>/dev/null) || { echo unknown; return; }
  curl -sf -m 2 -H "X-aws-ec2-metadata-token: $token" \
       "$IMDS_URL/latest/meta-data/instance-id" 2>/dev/null || echo unknown
}

run_training() {
  if [ -n "$CONTAINER_IMAGE" ]; then
    local env_args=()
    while IFS='=' read -r name _; do
      env_args+=(-e "$name")
    done < <(env | grep -E '^(SPOT_TRAINING_|@@EXTRA_ENV_PATTERN@@)' || true)
    log "running container $CONTAINER_IMAGE (attempt $SPOT_TRAINING_ATTEMPT, $SPOT_TRAINING_CAPACITY)"
    # shellcheck disable=SC2086  # the command is the container's argument list
    docker run --rm --network host "${env_args[@]}" "$CONTAINER_IMAGE" $TRAINING_COMMAND
  else
    log "running command (attempt $SPOT_TRAINING_ATTEMPT, $SPOT_TRAINING_CAPACITY): $TRAINING_COMMAND"
    bash -c "$TRAINING_COMMAND"
  fi
}

write_with_fsspec() {
  python3 -c 'import sys, fsspec; fs, path = fsspec.core.url_to_fs(sys.argv[1]); fs.pipe_file(path, sys.stdin.read().encode())' \
    "$SPOT_TRAINING_RESULT_URI" <<<"$1"
}

write_result() {
  local record="$1"
  case "$SPOT_TRAINING_RESULT_URI" in
    s3://*) if command -v aws >/dev/null 2>&1; then
              printf '%s' "$record" | aws s3 cp - "$SPOT_TRAINING_RESULT_URI" --content-type application/json
            else
              write_with_fsspec "$record"
            fi ;;
    *://*)  write_with_fsspec "$record" ;;
    *)      mkdir -p "$(dirname "$SPOT_TRAINING_RESULT_URI")" && printf '%s' "$record" > "$SPOT_TRAINING_RESULT_URI" ;;
  esac
}

started_at=$(date +%s)
run_training >>"$LOG_FILE" 2>&1
exit_code=$?
finished_at=$(date +%s)
log "training exited with code $exit_code"
record=$(printf '{"exit_code": %d, "started_at": %d, "finished_at": %d, "instance_id": "%s", "attempt": %s}' \
         "$exit_code" "$started_at" "$finished_at" "$(instance_id)" "$SPOT_TRAINING_ATTEMPT")
for i in 1 2 3 4 5; do
  write_result "$record" && break
  log "writing the result record failed (try $i); retrying"
  sleep $((i * 2))
done
log "shutting down"
$SHUTDOWN_COMMAND
