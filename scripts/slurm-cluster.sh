#!/usr/bin/env bash
# A throw-away Slurm cluster on this one machine, for Lumen's tests and for
# trying `srun`/`lumen submit` without a real cluster. Needs root.
#
#   scripts/slurm-cluster.sh start [local|netns]   bring it up (idempotent)
#   scripts/slurm-cluster.sh stop                  cancel jobs, stop daemons, delete namespaces
#   scripts/slurm-cluster.sh status                print mode, nodes and how to use it
#   scripts/slurm-cluster.sh exec CMD...           run a client command (srun, sbatch, ...) on the cluster
#
# Modes
#   local  slurmctld and NODES slurmd (n1..nN) in this network namespace, all on
#          127.0.0.1 with distinct ports; each slurmd in its own UTS namespace so
#          `hostname` in a task prints its node's name.
#   netns  a bridge 10.78.0.0/24 inside network namespace lumen-slctl (controller
#          "ctl", 10.78.0.1) and NODES compute hosts h1..hN, each its own network,
#          UTS and mount namespace (10.78.0.11, .12, ...), /etc/hosts replaced by
#          the cluster's. Client commands run inside lumen-slctl: use `exec`, or
#          $LUMEN_SLURM_RUN/bin/login.
#
# Everything lives under $LUMEN_SLURM_RUN (default /tmp/lumen-slurm): config,
# spool, logs, pid files, `env` (SLURM_CONF, LUMEN_SLURM_MODE, LUMEN_SLURM_LOGIN,
# LUMEN_SLURM_NODES for tests to source). /etc/slurm is not touched.
# Knobs: NODES (2 local / 3 netns), CPUS per node (8; more than the machine has
# is fine: TaskPlugin=task/none). A lock file serialises concurrent starts
# (tests running in parallel all call `start`).
#
# Traps this script handles (see ../shared/recipes/README.md for the story):
# munged without systemd; several slurmd on one host need TmpFS=%n and distinct
# hostnames; `ip netns exec` remounts /sys (slurmd then misses cgroups), so hosts
# are entered with nsenter + unshare; killed daemons linger as zombies here, so a
# zombie counts as stopped.
set -euo pipefail

RUN=${LUMEN_SLURM_RUN:-/tmp/lumen-slurm}
CPUS=${CPUS:-8}
SUBNET=10.78.0
CTL_NS=lumen-slctl
HOST_NS=lumen-slh
LOCK=${RUN}.lock
PKGS="slurm-wlm munge"

log() { echo "slurm-cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

alive() { # pid file -> true when the process runs and is not a zombie
    [[ -f $1 ]] && grep -qs '^State:[[:space:]]*[^Z]' "/proc/$(cat "$1")/status"
}

client() { # run a Slurm client command against the running cluster
    [[ -x $RUN/bin/login ]] || die "no cluster under $RUN; run: $0 start"
    "$RUN/bin/login" "$@"
}

# Bounded: a client facing a dead controller retries for a long time.
idle_nodes() { timeout 3 "$RUN/bin/login" sinfo -h -t idle -o %D 2>/dev/null || true; }

need_root() {
    [[ $(id -u) == 0 ]] || die "needs root (daemons, namespaces); run as root"
}

install_packages() {
    local missing=() p
    for p in $PKGS; do
        dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || missing+=("$p")
    done
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

start_munge() {
    mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        /usr/sbin/mungekey --create 2>/dev/null || /usr/sbin/create-munge-key -f
        chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    fi
    runuser -u munge -- /usr/sbin/munged 9>&-
    touch "$RUN/munged-started-by-us"
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return; sleep 0.1; done
    die "munged did not come up"
}

delete_namespaces() {
    local ns
    for ns in $(ip netns list 2>/dev/null | awk -v c="$CTL_NS" -v h="$HOST_NS" '$1 == c || index($1, h) == 1 {print $1}'); do
        # Anything still running in there (a stray task) goes first.
        local pids
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [[ -n $pids ]] && kill -9 $pids 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null && log "deleted netns $ns"
    done
}

do_stop() {
    [[ -d $RUN ]] || return 0
    if alive "$RUN/spool/slurmctld.pid"; then
        local jobs
        jobs=$(timeout 3 "$RUN/bin/login" squeue -h -o %i 2>/dev/null || true)
        if [[ -n $jobs ]]; then
            timeout 3 "$RUN/bin/login" scancel $jobs 2>/dev/null || true
            for _ in $(seq 100); do [[ -z $(timeout 3 "$RUN/bin/login" squeue -h -o %i 2>/dev/null) ]] && break; sleep 0.1; done
        fi
    fi
    local pids=() f p
    for f in "$RUN"/spool/slurmd-*.pid "$RUN"/spool/slurmctld.pid; do
        if alive "$f"; then p=$(cat "$f"); kill "$p" 2>/dev/null || true; pids+=("$p"); log "stopped $(basename "$f" .pid) (pid $p)"; fi
    done
    local left=()
    for _ in $(seq 100); do
        left=()
        for p in "${pids[@]}"; do
            [[ -e /proc/$p ]] && ! grep -qs '^State:.*Z' "/proc/$p/status" && left+=("$p")
        done
        ((${#left[@]} == 0)) && break
        sleep 0.1
    done
    if ((${#left[@]})); then log "force-killing ${left[*]}"; kill -9 "${left[@]}" 2>/dev/null || true; fi
    # slurmstepd of a cancelled step may outlive its slurmd for a moment: only
    # ours (their spool dir is under $RUN) are touched.
    for p in $(pgrep -x slurmstepd 2>/dev/null || true); do
        grep -qs "$RUN" "/proc/$p/environ" "/proc/$p/cmdline" && kill -9 "$p" 2>/dev/null || true
    done
    rm -f "$RUN"/spool/*.pid "$RUN/mode" "$RUN/env"
    delete_namespaces
    if [[ -f $RUN/munged-started-by-us && ${KEEP_MUNGE:-0} != 1 ]]; then
        p=$(cat /run/munge/munged.pid 2>/dev/null || true)
        [[ -n $p ]] && kill "$p" 2>/dev/null && log "stopped munged (pid $p)"
        rm -f "$RUN/munged-started-by-us"
    fi
}

write_config() { # mode nodes conf
    local mode=$1 names=$2 conf=$3 ctl i=0 n
    if [[ $mode == local ]]; then ctl=localhost; else ctl="ctl($SUBNET.1)"; fi
    {
        cat <<EOF
# generated by lumen scripts/slurm-cluster.sh ($mode)
ClusterName=lumen
SlurmctldHost=$ctl
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SlurmdParameters=config_overrides
ReturnToService=2
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$RUN/spool/ctld
SlurmdSpoolDir=$RUN/spool/d-%n
SlurmctldPidFile=$RUN/spool/slurmctld.pid
SlurmdPidFile=$RUN/spool/slurmd-%n.pid
SlurmctldLogFile=$RUN/logs/slurmctld.log
SlurmdLogFile=$RUN/logs/slurmd-%n.log
TmpFS=$RUN/tmp/%n
SlurmctldDebug=info
SlurmdDebug=info
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
InactiveLimit=0
KillWait=2
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=60
Waittime=0
EOF
        for n in ${names//,/ }; do
            i=$((i + 1))
            if [[ $mode == local ]]; then
                echo "NodeName=$n NodeHostname=$(hostname) NodeAddr=127.0.0.1 Port=$((17000 + i)) CPUs=$CPUS RealMemory=2000 State=UNKNOWN"
            else
                echo "NodeName=$n NodeAddr=$SUBNET.$((10 + i)) CPUs=$CPUS RealMemory=2000 State=UNKNOWN"
            fi
        done
        echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
    } >"$conf.tmp"
    mv "$conf.tmp" "$conf"
}

make_namespaces() { # nodes
    local nodes=$1 i
    printf '127.0.0.1 localhost\n%s.1 ctl\n' "$SUBNET" >"$RUN/hosts"
    for i in $(seq 1 "$nodes"); do echo "$SUBNET.$((10 + i)) h$i" >>"$RUN/hosts"; done
    ip netns add "$CTL_NS"
    ip -n "$CTL_NS" link set lo up
    ip -n "$CTL_NS" link add br0 type bridge
    ip -n "$CTL_NS" addr add "$SUBNET.1/24" dev br0
    ip -n "$CTL_NS" link set br0 up
    for i in $(seq 1 "$nodes"); do
        ip netns add "$HOST_NS$i"
        ip -n "$HOST_NS$i" link set lo up
        # Created straight into the two namespaces: nothing appears in ours.
        ip -n "$CTL_NS" link add "vh$i" type veth peer name eth0 netns "$HOST_NS$i"
        ip -n "$CTL_NS" link set "vh$i" master br0 up
        ip -n "$HOST_NS$i" addr add "$SUBNET.$((10 + i))/24" dev eth0
        ip -n "$HOST_NS$i" link set eth0 up
    done
}

write_wrappers() { # mode conf
    local mode=$1 conf=$2
    if [[ $mode == netns ]]; then
        # nsrun NETNS HOSTNAME CMD...: run CMD "on" a simulated host.
        cat >"$RUN/bin/nsrun" <<EOF
#!/bin/bash
ns=\$1 host=\$2; shift 2
export SLURM_CONF=$conf
exec nsenter --net=/run/netns/\$ns unshare --uts --mount --propagation private \\
  sh -c 'mount --bind $RUN/hosts /etc/hosts && hostname "\$0" && exec "\$@"' "\$host" "\$@"
EOF
        printf '#!/bin/bash\nexec %s/bin/nsrun %s ctl "$@"\n' "$RUN" "$CTL_NS" >"$RUN/bin/login"
    else
        printf '#!/bin/bash\nexport SLURM_CONF=%s\nexec "$@"\n' "$conf" >"$RUN/bin/login"
    fi
    chmod +x "$RUN"/bin/*
}

do_start() {
    local mode=$1 nodes names pre
    case $mode in
        local) nodes=${NODES:-2}; pre=n ;;
        netns) nodes=${NODES:-3}; pre=h ;;
        *) die "unknown mode $mode (local|netns)" ;;
    esac
    names=$(seq -f "$pre%g" 1 "$nodes" | paste -sd,)
    if [[ -f $RUN/mode && $(cat "$RUN/mode") == "$mode:$nodes:$CPUS" ]]; then
        local ok=1 n
        alive "$RUN/spool/slurmctld.pid" || ok=0
        for n in ${names//,/ }; do alive "$RUN/spool/slurmd-$n.pid" || ok=0; done
        if ((ok)) && [[ $(idle_nodes) == "$nodes" || -n $(timeout 3 "$RUN/bin/login" sinfo -h -o %D 2>/dev/null) ]]; then
            log "already up ($mode, nodes $names)"
            return 0
        fi
    fi
    install_packages
    do_stop
    mkdir -p "$RUN"/{spool/ctld,logs,tmp,bin}
    rm -rf "$RUN"/spool/ctld/* "$RUN"/spool/d-* "$RUN"/tmp/* "$RUN"/logs/*
    for n in ${names//,/ }; do mkdir -p "$RUN/spool/d-$n" "$RUN/tmp/$n"; done
    start_munge
    local conf=$RUN/slurm.conf
    write_config "$mode" "$names" "$conf"
    write_wrappers "$mode" "$conf"
    export SLURM_CONF=$conf
    if [[ $mode == netns ]]; then
        make_namespaces "$nodes"
        "$RUN/bin/nsrun" "$CTL_NS" ctl slurmctld 9>&-
        local i=0
        for n in ${names//,/ }; do i=$((i + 1)); "$RUN/bin/nsrun" "$HOST_NS$i" "$n" slurmd -N "$n" 9>&-; done
    else
        # Node names resolve to 127.0.0.1 inside the tasks (their own /etc/hosts),
        # so programs that look up SLURM_STEP_NODELIST find their peers.
        printf '127.0.0.1 localhost %s\n' "${names//,/ }" >"$RUN/hosts"
        slurmctld 9>&-
        for n in ${names//,/ }; do
            unshare --uts --mount --propagation private \
                sh -c "mount --bind $RUN/hosts /etc/hosts && hostname $n && exec slurmd -N $n" 9>&-
        done
    fi
    echo "$mode:$nodes:$CPUS" >"$RUN/mode"
    for _ in $(seq 300); do [[ $(idle_nodes) == "$nodes" ]] && break; sleep 0.1; done
    if [[ $(idle_nodes) != "$nodes" ]]; then
        client sinfo -N >&2 || true
        tail -n 20 "$RUN"/logs/*.log >&2 || true
        die "the cluster did not come up ($mode); logs above"
    fi
    cat >"$RUN/env" <<EOF
SLURM_CONF=$conf
LUMEN_SLURM_MODE=$mode
LUMEN_SLURM_LOGIN=$RUN/bin/login
LUMEN_SLURM_NODES=$names
LUMEN_SLURM_CPUS=$CPUS
EOF
    log "up: mode=$mode nodes=$names cpus/node=$CPUS; run commands with: $0 exec srun -N $nodes hostname"
}

do_status() {
    if [[ ! -f $RUN/mode ]] || ! alive "$RUN/spool/slurmctld.pid"; then
        echo "stopped"
        return 3
    fi
    echo "mode: $(cut -d: -f1 "$RUN/mode")  (run dir $RUN)"
    cat "$RUN/env"
    client sinfo -N
}

cmd=${1:-}
shift || true
case $cmd in
    start)
        need_root
        mkdir -p "$(dirname "$RUN")"
        exec 9>"$LOCK"
        flock -w 120 9 || die "another start/stop holds $LOCK"
        do_start "${1:-${MODE:-local}}"
        ;;
    stop)
        need_root
        exec 9>"$LOCK"
        flock -w 120 9 || die "another start/stop holds $LOCK"
        do_stop
        ;;
    status) do_status ;;
    exec) client "$@" ;;
    *)
        sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
        exit 2
        ;;
esac
