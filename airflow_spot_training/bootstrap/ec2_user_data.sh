#!/bin/bash
# airflow-spot-training EC2 bootstrap: rendered once per attempt by EC2SpotBackend.
#
# What it does, in order:
#   1. exports the environment contract (SPOT_TRAINING_*), the user's extra variables, and
#      the secrets resolved from AWS Secrets Manager (values never appear in the user data);
#   2. runs the user's command, or the user's container with the same variables;
#   3. asks IMDS whether a spot reclaim is scheduled (spot/instance-action answers 200): a
#      training that caught the two-minute notice and exited early was reclaimed, not failed;
#   4. writes the attempt's result record {"exit_code", "token", "reclaim_notice",
#      "finished_at", "instance_id", ...} to SPOT_TRAINING_RESULT_URI (under the checkpoint
#      prefix; the token tells it from a record another run left at the same prefix);
#   5. shuts the instance down. The backend launches it with
#      InstanceInitiatedShutdownBehavior=terminate, so shutting down terminates it and
#      the state reason becomes Client.InstanceInitiatedShutdown: "the training ended",
#      how it ended read from the result record.
#
# The training's output goes to the log file only (never into a pipe that could break under
# it during its emergency checkpoint). Before shutting down, the script copies the file's
# last lines to the instance's console (GetConsoleOutput, which the backend reads when the
# attempt failed); with log_group= a shipper (airflow_spot_training.bootstrap.cloudwatch_logs)
# also sends the whole log, redacted, to a CloudWatch Logs stream named after the token.
#
# A spot reclaim that lands while the training runs terminates the instance from outside
# (Server.SpotInstanceTermination), and the backend reports a preemption unless the record
# says the training had already exited 0. Training code gets the two-minute notice through
# airflow_spot_training.runtime.interruption.InterruptionWatcher(aws_imds=True).
#
# IMDSv2 only (the backend launches with HttpTokens=required).
#
# Placeholders @@NAME@@ are replaced by shell-quoted values when rendering.
#
# Test seams (never set on a real instance; tests run this script with bash as a local
# process against loopback fakes):
#   SPOT_TRAINING_IMDS_URL         base URL of the instance metadata service (also read by
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
export SPOT_TRAINING_TOKEN=@@TOKEN@@
export SPOT_TRAINING_INIT_URI=@@INIT_URI@@
@@EXTRA_ENV@@
TRAINING_COMMAND=@@COMMAND@@
CONTAINER_IMAGE=@@CONTAINER_IMAGE@@
LOG_GROUP=@@LOG_GROUP@@
LOG_REGION=@@LOG_REGION@@
REDACT_ENV=@@REDACT_ENV@@
SHUTDOWN_COMMAND="${SPOT_TRAINING_SHUTDOWN_COMMAND:-}"; [ -n "$SHUTDOWN_COMMAND" ] || SHUTDOWN_COMMAND=@@SHUTDOWN_COMMAND@@
LOG_FILE="${SPOT_TRAINING_LOG_FILE:-}"; [ -n "$LOG_FILE" ] || LOG_FILE=@@LOG_FILE@@
IMDS_URL="${SPOT_TRAINING_IMDS_URL:-http://169.254.169.254}"

log() { echo "[spot-training] $(date -u +%Y-%m-%dT%H:%M:%SZ) $*" | tee -a "$LOG_FILE" >&2; }

start_log_shipping() {  # with log_group=: after the secrets are resolved, so their values can be masked
  SHIPPER=""
  [ -n "$LOG_GROUP" ] || return 0
  python3 -m airflow_spot_training.bootstrap.cloudwatch_logs --file "$LOG_FILE" --group "$LOG_GROUP" \
    --stream "$SPOT_TRAINING_TOKEN" --region "$LOG_REGION" --redact-env "$REDACT_ENV" &
  SHIPPER=$!
}

stop_log_shipping() {  # it sends what is left, then exits
  [ -n "$SHIPPER" ] || return 0
  kill -TERM "$SHIPPER" 2>/dev/null && wait "$SHIPPER"
}

imds() {  # $1: a meta-data path; prints the body, fails on any answer but 200
  local token
  token=$(curl -sf -m 2 -X PUT "$IMDS_URL/latest/api/token" \
          -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' 2>/dev/null) || return 1
  curl -sf -m 2 -H "X-aws-ec2-metadata-token: $token" "$IMDS_URL/latest/meta-data/$1" 2>/dev/null
}

instance_id() { imds instance-id || echo unknown; }

resolve_secret() {  # $1: a Secrets Manager secret id (name or ARN); prints its string value
  if command -v aws >/dev/null 2>&1; then
    aws secretsmanager get-secret-value --secret-id "$1" --query SecretString --output text
  else
    python3 -c 'import sys, boto3; print(boto3.client("secretsmanager").get_secret_value(SecretId=sys.argv[1])["SecretString"])' "$1"
  fi
}
@@SECRETS@@
start_log_shipping

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
  printf '%s' "$1" | python3 -c 'import sys, fsspec; fs, path = fsspec.core.url_to_fs(sys.argv[1]); fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True); fs.pipe_file(path, sys.stdin.buffer.read())' \
    "$SPOT_TRAINING_RESULT_URI"
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
reclaim_notice=false
if [ "$exit_code" -ne 0 ] && imds spot/instance-action >/dev/null; then
  reclaim_notice=true
  log "a spot reclaim is scheduled for this instance: recording a preemption, not a failure"
fi
record=$(printf '{"exit_code": %d, "token": "%s", "reclaim_notice": %s, "started_at": %d, "finished_at": %d, "instance_id": "%s", "attempt": %s}' \
         "$exit_code" "$SPOT_TRAINING_TOKEN" "$reclaim_notice" "$started_at" "$finished_at" "$(instance_id)" \
         "$SPOT_TRAINING_ATTEMPT")
for i in 1 2 3 4 5; do
  write_result "$record" && break
  log "writing the result record failed (try $i); retrying"
  sleep $((i * 2))
done
log "shutting down"
stop_log_shipping
{ echo "[spot-training] the last lines of $LOG_FILE:"; tail -n 200 "$LOG_FILE"; } >&2  # the console keeps them
$SHUTDOWN_COMMAND
