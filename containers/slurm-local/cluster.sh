#!/usr/bin/env bash
# A real two-node SLURM 22.05 cluster on this one host, for tests and demos.
#
#   containers/slurm-local/cluster.sh up     # install what's missing, start, wait for idle nodes
#   containers/slurm-local/cluster.sh down   # stop exactly what `up` started, remove the state dir
#
# `up` starts munged, a MariaDB server (loopback port, own datadir and socket),
# slurmdbd (accounting, so sacct works: submitit polls it), slurmctld, and two
# slurmd daemons acting as nodes n1 and n2 (each with its own Port=). All config,
# sockets, logs and pid files live in $T2V_SLURM_STATE (default /tmp/t2v-slurm).
# Node names resolve through /etc/hosts lines that `up` adds (marked t2v-slurm)
# and `down` removes, so torch's rendezvous on "n1" works. The last line `up`
# prints is `export SLURM_CONF=...`. Running `up` twice is harmless.
set -euo pipefail

STATE=${T2V_SLURM_STATE:-/tmp/t2v-slurm}
CLUSTER=t2v
CTLD_PORT=${T2V_SLURMCTLD_PORT:-16817}
DBD_PORT=${T2V_SLURMDBD_PORT:-16819}
DB_PORT=${T2V_MARIADB_PORT:-16306}
N1_PORT=${T2V_SLURMD1_PORT:-16821}
N2_PORT=${T2V_SLURMD2_PORT:-16822}
# Small on purpose: real clusters cap arrays too (often at 1001), and a limit of 8 makes every
# bigger array in the tests go through the split into several arrays (jobs/executor.py).
MAX_ARRAY=${T2V_SLURM_MAX_ARRAY:-8}
HOSTS_TAG="# t2v-slurm"
MUNGE_SOCKET=/run/munge/munge.socket.2
CPUS=$(nproc)
export SLURM_CONF=$STATE/slurm.conf

log() { echo "[cluster] $*" >&2; }
die() { echo "[cluster] error: $*" >&2; exit 1; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_missing() {
  local need=()
  command -v munged >/dev/null || need+=(munge)
  command -v slurmctld >/dev/null || need+=(slurmctld)
  command -v slurmd >/dev/null || need+=(slurmd)
  command -v sbatch >/dev/null || need+=(slurm-client)
  command -v slurmdbd >/dev/null || need+=(slurmdbd)
  command -v mariadbd >/dev/null || need+=(mariadb-server)
  if [ ${#need[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "not root: cannot apt-get install ${need[*]}"
    log "installing ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

write_configs() {
  mkdir -p "$STATE"/{munge,mysql,ctld,run,log,spool}
  chmod 700 "$STATE/munge"
  [ -f "$STATE/munge/munge.key" ] || dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$STATE/munge/munge.key"
  local auth="AuthType=auth/munge"
  cat > "$STATE/slurm.conf" <<CONF
ClusterName=$CLUSTER
SlurmctldHost=$(hostname)(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
$auth
# A requeued job waits cred_expire seconds (default 120) before it may start again.
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
JobCompType=jobcomp/none
ReturnToService=2
MaxArraySize=$MAX_ARRAY
# Test-cluster timings: schedule often, and let requeued jobs run again at once.
SchedulerParameters=sched_interval=2,bf_interval=2
MinJobAge=300
KillWait=10
SlurmctldTimeout=30
SlurmdTimeout=30
# One CPU more than the host has, per node: the slot a chain's one-CPU MLflow server job takes
# (it idles), so that two 2-CPU training tasks can still run beside it. config_overrides makes
# slurmd report these numbers instead of refusing the node for having fewer cores.
SlurmdParameters=config_overrides
NodeName=n1 NodeHostname=$(hostname) NodeAddr=127.0.0.1 Port=$N1_PORT CPUs=$((CPUS + 1)) RealMemory=4000 State=UNKNOWN
NodeName=n2 NodeHostname=$(hostname) NodeAddr=127.0.0.1 Port=$N2_PORT CPUs=$((CPUS + 1)) RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
  cat > "$STATE/slurmdbd.conf" <<CONF
$auth
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
CONF
  chmod 600 "$STATE/slurmdbd.conf"
  touch "$STATE/cgroup.conf"
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local t=$1 what=$2; shift 2
  local end=$((SECONDS + t))
  while [ $SECONDS -lt $end ]; do timeout 5 "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  die "timed out waiting for $what (logs in $STATE/log)"
}

start_munge() {
  alive "$STATE/run/munged.pid" && return
  # The default socket path: slurm's accounting connections ignore AuthInfo=socket= (seen with 22.05).
  if [ -S "$MUNGE_SOCKET" ] && munge -n >/dev/null 2>&1; then
    die "another munged already serves $MUNGE_SOCKET; stop it first"
  fi
  mkdir -p "$(dirname "$MUNGE_SOCKET")"
  munged --force --key-file="$STATE/munge/munge.key" --socket="$MUNGE_SOCKET" \
    --pid-file="$STATE/run/munged.pid" --log-file="$STATE/log/munged.log" --seed-file="$STATE/munge/munge.seed"
  wait_for 10 munged munge -n
}

start_mariadb() {
  local sock=$STATE/mysql.sock
  if ! alive "$STATE/run/mariadb.pid"; then
    if [ ! -d "$STATE/mysql/mysql" ]; then
      mariadb-install-db --no-defaults --datadir="$STATE/mysql" --user=root --skip-test-db \
        >"$STATE/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed (see $STATE/log)"
    fi
    mariadbd --no-defaults --datadir="$STATE/mysql" --socket="$sock" --port="$DB_PORT" \
      --bind-address=127.0.0.1 --pid-file="$STATE/run/mariadb.pid" --user=root \
      --log-error="$STATE/log/mariadb.log" --innodb-buffer-pool-size=64M &
    wait_for 60 mariadb mariadb --no-defaults -S "$sock" -u root -e "SELECT 1"
  fi
  mariadb --no-defaults -S "$sock" -u root -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
}

start_slurm() {
  if ! alive "$STATE/run/slurmdbd.pid"; then
    slurmdbd
    wait_for 60 slurmdbd sacctmgr -n list cluster
  fi
  sacctmgr -n list cluster format=cluster | grep -qw "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
  if ! alive "$STATE/run/slurmctld.pid"; then
    slurmctld -f "$SLURM_CONF"
    wait_for 60 slurmctld scontrol ping
  fi
  for n in n1 n2; do
    alive "$STATE/run/slurmd-$n.pid" || slurmd -f "$SLURM_CONF" -N "$n"
  done
  for n in n1 n2; do  # a node left DOWN by an earlier run comes back
    scontrol update nodename="$n" state=resume >/dev/null 2>&1 || true
  done
  wait_for 90 "n1 and n2 idle" bash -c '[ "$(sinfo -h -N -o "%N %t" | grep -c idle)" -ge 2 ]'
}

hosts_add() {
  grep -q "$HOSTS_TAG" /etc/hosts 2>/dev/null && return
  echo "127.0.0.1 n1 n2 $HOSTS_TAG" >> /etc/hosts
}

hosts_remove() {
  if grep -q "$HOSTS_TAG" /etc/hosts 2>/dev/null; then
    grep -v "$HOSTS_TAG" /etc/hosts > /tmp/t2v-hosts.$$ && cat /tmp/t2v-hosts.$$ > /etc/hosts && rm -f /tmp/t2v-hosts.$$
  fi
}

stop_pid() {  # stop_pid PIDFILE NAME
  local f=$1
  [ -f "$f" ] || return 0
  local pid; pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
    log "stopped $2 ($pid)"
  fi
  rm -f "$f"
}

up() {
  [ "$(id -u)" = 0 ] || die "must run as root (it installs packages and edits /etc/hosts)"
  install_missing
  write_configs
  hosts_add
  start_munge
  start_mariadb
  start_slurm
  log "cluster '$CLUSTER' up: $(sinfo -h -N -o '%N=%t' | tr '\n' ' ')"
  echo "export SLURM_CONF=$SLURM_CONF"
}

down() {
  if [ -d "$STATE" ]; then
    for n in n1 n2; do stop_pid "$STATE/run/slurmd-$n.pid" "slurmd $n"; done
    stop_pid "$STATE/run/slurmctld.pid" slurmctld
    stop_pid "$STATE/run/slurmdbd.pid" slurmdbd
    stop_pid "$STATE/run/mariadb.pid" mariadb
    stop_pid "$STATE/run/munged.pid" munged
    rm -rf "$STATE"
  fi
  hosts_remove
  log "cluster down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
