# The fleet boot's network: QEMU user networking with restrict=on, whose only ways out are
# the two guestfwd addresses (the klive server and the host's step answers).
. /tests/lib.sh

ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0
check "eth0 is up with 10.0.2.15" sh -c 'ip addr show eth0 | grep -q "inet 10.0.2.15/"'
check_step "the host answers steps over the network" ping
