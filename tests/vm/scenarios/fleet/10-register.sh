# Registration with an enrollment token, pinning the server's CA and TUF root digest (both
# put on the state disk by the host); nothing is published yet, so there is nothing to do.
. /tests/lib.sh
F=$KLIVE_HARNESS_DIR/fleet

check_exit "klive register pins the CA and the TUF root" 0 \
    klive register "$(cat "$F/server")" --token "$(cat "$F/canary.token")" \
    --ca "$F/ca.pem" --root-sha256 "$(cat "$F/root.sha256")" --hostname vm-fleet
host_id=$(klive status --json | json_field host_id)
echo "$host_id" > "$F/host_id"
check "status names the host id and the canary channel" \
    sh -c "[ -n '$host_id' ] && klive status --json | grep -q '\"channel\": \"canary\"'"
check "the credential is stored 0600" \
    sh -c '[ "$(stat -c %a /var/lib/klive/fleet/registration.json)" = 600 ]'
check_exit "klive check: nothing to do (exit 0)" 0 klive check
check_exit "klive update: up to date" 0 klive update
check_eq "no klive patch" "$KLIVE_RELEASE" "$(klive uname -r)"
check_step "server API: host registered, no level" expect "$host_id" none canary
