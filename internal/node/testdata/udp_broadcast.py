#!/usr/bin/env python3
# The broadcast client of Foundations of Python Network Programming
# (3rd ed.), chapter 2, udp_broadcast.py: a socket with SO_BROADCAST
# sends one datagram to a subnet's broadcast address, and any server bound
# to the port receives it. This copy also waits for the answer, and prints
# it with the address it came from.

import argparse
import socket

BUFSIZE = 65535


def client(network, port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    text = 'Broadcast datagram!'
    sock.sendto(text.encode('ascii'), (network, port))
    sock.settimeout(10)
    data, address = sock.recvfrom(BUFSIZE)
    print('The server at {}:{} replied {!r}'.format(address[0], address[1], data.decode('ascii')))


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description='Send a UDP broadcast and wait for the answer')
    parser.add_argument('network', help='the subnet\'s broadcast address')
    parser.add_argument('-p', metavar='PORT', type=int, default=1060, help='UDP port (default 1060)')
    args = parser.parse_args()
    client(args.network, args.p)
