#!/usr/bin/env bash
# Generate every password and token of a pv-battery-ems installation, write them where the services read
# them, and show them to the installer once.
#
#   deploy/init-secrets.sh ENV_FILE [PASSWD_FILE]
#
# ENV_FILE (created with mode 0600; refused if it exists, so secrets are never replaced by accident):
#   EMS_INFLUX_TOKEN, EMS_MQTT_PASSWORD, EMS_DASHBOARD_TOKEN  the controller (systemd EnvironmentFile,
#                                                             docker-compose env_file)
#   INFLUXDB_ADMIN_PASSWORD, GRAFANA_ADMIN_PASSWORD           the InfluxDB and Grafana containers
# PASSWD_FILE (optional; mode 0600, refused if it exists): the mosquitto password file with the users of
#   deploy/mosquitto/acl: ems-controller (EMS_MQTT_PASSWORD), operator and grafana (their passwords are
#   only printed below and stored hashed). Needs mosquitto_passwd, or docker to run it from the image.
#
# Docs: docs/deployment.md (Secrets).
set -euo pipefail

usage() { echo "usage: $0 ENV_FILE [PASSWD_FILE]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
env_file=$1
passwd_file=${2:-}
for f in "$env_file" ${passwd_file:+"$passwd_file"}; do
  if [ -e "$f" ]; then
    echo "$0: $f exists; not overwritten (remove it first to generate new secrets)" >&2
    exit 1
  fi
done

secret() { openssl rand -hex "$1"; }
umask 077
influx_token=$(secret 24)
mqtt_password=$(secret 16)
dashboard_token=$(secret 24)
influx_admin=$(secret 12)
grafana_admin=$(secret 12)
operator_password=$(secret 12)
grafana_mqtt_password=$(secret 12)

if [ -n "$passwd_file" ]; then
  : > "$passwd_file"
  if command -v mosquitto_passwd >/dev/null; then
    mqtt_passwd() { mosquitto_passwd -b "$passwd_file" "$1" "$2"; }
  elif command -v docker >/dev/null; then
    dir=$(cd "$(dirname "$passwd_file")" && pwd)
    name=$(basename "$passwd_file")
    mqtt_passwd() { docker run --rm -v "$dir:/w" eclipse-mosquitto:2 mosquitto_passwd -b "/w/$name" "$1" "$2"; }
  else
    rm -f "$passwd_file"
    echo "$0: needs mosquitto_passwd (apt-get install mosquitto) or docker for $passwd_file" >&2
    exit 1
  fi
  mqtt_passwd ems-controller "$mqtt_password"
  mqtt_passwd operator "$operator_password"
  mqtt_passwd grafana "$grafana_mqtt_password"
  chmod 0600 "$passwd_file"
fi

cat > "$env_file" <<EOF
# pv-battery-ems secrets, generated $(date -u +%Y-%m-%dT%H:%M:%SZ) by deploy/init-secrets.sh (mode 0600).
EMS_INFLUX_TOKEN=$influx_token
EMS_MQTT_PASSWORD=$mqtt_password
# empty this for a read-only dashboard
EMS_DASHBOARD_TOKEN=$dashboard_token
INFLUXDB_ADMIN_PASSWORD=$influx_admin
GRAFANA_ADMIN_PASSWORD=$grafana_admin
EOF
chmod 0600 "$env_file"

cat <<EOF
Secrets written to $env_file${passwd_file:+ and $passwd_file}. Note them now: they are not shown again.

  Grafana             user admin           password $grafana_admin
  InfluxDB            user admin           password $influx_admin
  dashboard control   bearer token         $dashboard_token
EOF
if [ -n "$passwd_file" ]; then
  cat <<EOF
  MQTT                user operator        password $operator_password
  MQTT (read only)    user grafana         password $grafana_mqtt_password
  MQTT (controller)   user ems-controller  password in $env_file (EMS_MQTT_PASSWORD)
EOF
fi
