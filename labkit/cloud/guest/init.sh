#!/bin/sh
# labkit-tiny's /init: PID 1 of the tiny guest, a busybox sh script.
#
# It does, in a few lines, what cloud-init (or CirrOS's own scripts) does in a real
# cloud's guest: mount the kernel's filesystems, load the virtio drivers, take an
# address by DHCP, ask the metadata service for the hostname, the ssh key and the
# user data, start an ssh server, say so on the serial console, then sleep.
#
# The metadata service's address comes from the kernel command line
# (labkit.metadata=<ip>): qemu's user-mode network forwards only addresses inside the
# guest's subnet, so the usual 169.254.169.254 cannot be used.
#
# Console lines (tests and notebooks grep them): "labkit-tiny: <what failed>" when
# something fails, then always the banner
#   labkit-tiny: hostname <hostname>, address <ip>/<prefixlen>, metadata <meta-ip>
# and "labkit-tiny ready". A broken network or metadata service shows up there but
# never hangs the boot.

export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
umask 022

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The initramfs holds no /dev/console node (it is packed without root), so the kernel
# could not hand one to us: take the console now that devtmpfs provides it.
exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mkdir -p /run/labkit

say() { echo "labkit-tiny: $*"; }

# --- drivers: the cloud kernel builds virtio as modules; the build wrote their order --------
while read -r module; do
    [ -n "$module" ] || continue
    insmod "$module" || say "could not load the module ${module##*/}"
done </etc/labkit/modules

# --- network: DHCP gives the address of the port (qemu's dhcpstart) --------------------------
# udhcpc runs this script with the lease in its environment ($ip, $mask, $router, $dns).
cat >/etc/udhcpc.script <<'EOF'
#!/bin/sh
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-32}" dev "$interface"
    if [ -n "$router" ]; then
        ip route del default 2>/dev/null
        for r in $router; do ip route add default via "$r" dev "$interface" && break; done
    fi
    : >/etc/resolv.conf
    [ -n "$domain" ] && echo "search $domain" >>/etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >>/etc/resolv.conf; done
    ;;
esac
exit 0
EOF
chmod 755 /etc/udhcpc.script

ip link set lo up
address=
# virtio_net registers eth0 as it loads; allow it a moment on a slow (TCG) boot.
n=0
while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
if [ ! -e /sys/class/net/eth0 ]; then
    say "no network device eth0 (is there a virtio-net device?)"
else
    ip link set eth0 up
    # -q: quit once bound (qemu's lease lasts a day); -n: give up rather than retry forever.
    if udhcpc -i eth0 -s /etc/udhcpc.script -f -q -n -t 5 -T 1 -A 1; then
        address=$(ip -4 -o addr show dev eth0 | awk '{ print $4; exit }')
    fi
    [ -n "$address" ] || say "DHCP on eth0 failed: no address"
fi

# --- metadata: hostname, ssh key, user data (nova's metadata API over HTTP port 80) ---------
meta=
for arg in $(cat /proc/cmdline); do
    case "$arg" in labkit.metadata=*) meta=${arg#labkit.metadata=} ;; esac
done

# fetch PATH FILE: GET http://$meta$PATH into FILE. Debian's busybox wget segfaults on -T,
# so `timeout` bounds it instead.
fetch() {
    rm -f "$2"
    timeout 5 wget -q -O "$2" "http://$meta$1" 2>/dev/null || { rm -f "$2"; return 1; }
}

hostname_from_metadata=
if [ -z "$meta" ]; then
    say "no labkit.metadata=<ip> on the kernel command line: no metadata service"
elif [ -z "$address" ]; then
    say "no address, so no metadata from $meta"
else
    tries=1
    until fetch /latest/meta-data/hostname /run/labkit/hostname; do
        if [ $tries -ge 3 ]; then
            say "no hostname from the metadata service at http://$meta/ (tried $tries times)"
            break
        fi
        tries=$((tries + 1))
        sleep 1
    done
    if [ -s /run/labkit/hostname ]; then
        read -r hostname_from_metadata </run/labkit/hostname
        if fetch /latest/meta-data/public-keys/0/openssh-key /root/.ssh/authorized_keys; then
            chmod 600 /root/.ssh/authorized_keys
        else
            say "no ssh key from the metadata service: ssh logins will be refused"
        fi
        fetch /openstack/latest/user_data /run/labkit/user-data
    fi
fi

if [ -n "$hostname_from_metadata" ]; then
    hostname "$hostname_from_metadata"
    echo "$hostname_from_metadata" >/etc/hostname
    echo "127.0.1.1 $hostname_from_metadata" >>/etc/hosts
fi

# --- ssh: dropbear makes its host key on the first connection (-R); keys only (-s) ---------
dropbear -R -s -p 22 -P /run/dropbear.pid || say "dropbear (the ssh server) did not start"

# --- user data: a "#!" script runs once, its output on the console -------------------------
userdata=/run/labkit/user-data
if [ -s "$userdata" ]; then
    if [ "$(head -c 2 "$userdata")" = "#!" ]; then
        chmod 700 "$userdata"
        # In the background, so a script that never ends cannot hold up the boot; a status
        # file says when it finished (kill -0 would also see a zombie child as running).
        ( cd / && "$userdata"; echo $? >/run/labkit/user-data.status ) &
        n=0
        while [ ! -e /run/labkit/user-data.status ] && [ $n -lt 300 ]; do
            sleep 0.1; n=$((n + 1))
        done
        if [ ! -e /run/labkit/user-data.status ]; then
            say "user data still running after 30 s; not waiting for it"
        elif [ "$(cat /run/labkit/user-data.status)" != 0 ]; then
            say "user data exited with status $(cat /run/labkit/user-data.status)"
        fi
    else
        say "user data is not a script (no #! line): ignored"
    fi
fi

echo "labkit-tiny: hostname $(hostname), address ${address:-(none)}, metadata ${meta:-(none)}"
echo "labkit-tiny ready"

# PID 1 must not exit. Sleep long: anything waking every second costs the host CPU under TCG.
while :; do sleep 86400; done
