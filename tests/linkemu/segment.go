// SPDX-License-Identifier: Apache-2.0

package linkemu

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The rx sockets use PACKET_VNET_HDR because veth hands the peer's offload
// state straight through: a TSO super-frame sent by the client or forwarded
// by the router arrives as one 64 KB frame, and checksum-offloaded frames
// arrive with only the pseudo-header sum in the checksum field. Turning
// offloads off on our own ends does not change what the peers send, so the
// header tells us how to cut and finish such frames into what would have been
// on the wire.
const vnetHdrLen = 10

const (
	vnetNeedsCsum = 1

	gsoNone  = 0
	gsoTCPv4 = 1
	gsoTCPv6 = 4
	gsoUDPL4 = 5
	gsoECN   = 0x80
)

type vnetHdr struct {
	flags, gsoType                         uint8
	hdrLen, gsoSize, csumStart, csumOffset uint16
}

// The kernel writes the header in host byte order (virtio legacy).
func parseVnetHdr(b []byte) (vnetHdr, error) {
	if len(b) < vnetHdrLen {
		return vnetHdr{}, errors.New("short vnet header")
	}
	ne := binary.NativeEndian
	return vnetHdr{
		flags:      b[0],
		gsoType:    b[1],
		hdrLen:     ne.Uint16(b[2:]),
		gsoSize:    ne.Uint16(b[4:]),
		csumStart:  ne.Uint16(b[6:]),
		csumOffset: ne.Uint16(b[8:]),
	}, nil
}

const (
	etherIPv4 = 0x0800
	etherIPv6 = 0x86dd
	protoTCP  = 6
	protoUDP  = 17
)

var errMalformed = errors.New("malformed frame")

// wireFrames turns what the rx socket returned into frames as they would be
// on the wire: checksums complete and at most one MSS of payload each. The
// results never alias f.
func wireFrames(h vnetHdr, f []byte) ([][]byte, error) {
	switch h.gsoType &^ gsoECN {
	case gsoNone:
		out := append([]byte(nil), f...)
		if h.flags&vnetNeedsCsum != 0 {
			if err := finishChecksum(out, int(h.csumStart), int(h.csumOffset)); err != nil {
				return nil, err
			}
		}
		return [][]byte{out}, nil
	case gsoTCPv4, gsoTCPv6, gsoUDPL4:
		return segment(h, f)
	}
	return nil, fmt.Errorf("gso type %#x: %w", h.gsoType, errMalformed)
}

// finishChecksum completes a CHECKSUM_PARTIAL frame the way the kernel's
// skb_checksum_help does: the field holds the pseudo-header sum already.
func finishChecksum(f []byte, start, off int) error {
	if start > len(f) || start+off+2 > len(f) {
		return fmt.Errorf("checksum at %d+%d beyond %d bytes: %w", start, off, len(f), errMalformed)
	}
	putChecksum(f[start+off:], fold(sum16(f[start:], 0)))
	return nil
}

// putChecksum stores ^sum, with 0 sent as 0xffff (same value in one's
// complement, and mandatory for UDP where 0 means "no checksum").
func putChecksum(b []byte, folded uint16) {
	c := ^folded
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(b, c)
}

func sum16(b []byte, acc uint64) uint64 {
	for len(b) >= 8 {
		acc += uint64(binary.BigEndian.Uint16(b)) + uint64(binary.BigEndian.Uint16(b[2:])) +
			uint64(binary.BigEndian.Uint16(b[4:])) + uint64(binary.BigEndian.Uint16(b[6:]))
		b = b[8:]
	}
	for len(b) >= 2 {
		acc += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		acc += uint64(b[0]) << 8
	}
	return acc
}

func fold(acc uint64) uint16 {
	for acc>>16 != 0 {
		acc = acc&0xffff + acc>>16
	}
	return uint16(acc)
}

// l3 finds the network header behind any VLAN tags.
func l3(f []byte) (off int, etype uint16, err error) {
	off = 12
	for {
		if off+2 > len(f) {
			return 0, 0, fmt.Errorf("no ethertype: %w", errMalformed)
		}
		etype = binary.BigEndian.Uint16(f[off:])
		off += 2
		if etype != 0x8100 && etype != 0x88a8 {
			return off, etype, nil
		}
		off += 2
	}
}

// pseudoSum is the L4 pseudo-header sum for an L4 segment of l4len bytes.
func pseudoSum(f []byte, nh int, v6 bool, proto uint8, l4len int) uint64 {
	var acc uint64
	if v6 {
		acc = sum16(f[nh+8:nh+40], 0)
		acc += uint64(l4len>>16) + uint64(l4len&0xffff)
	} else {
		acc = sum16(f[nh+12:nh+20], 0)
		acc += uint64(l4len)
	}
	return acc + uint64(proto)
}

// segment cuts a GSO super-frame like the kernel's tcp/udp GSO would:
// per-segment lengths, IPv4 IDs and header checksum, TCP sequence numbers,
// FIN/PSH only on the last and CWR only on the first segment, full L4
// checksums.
func segment(h vnetHdr, f []byte) ([][]byte, error) {
	nh, etype, err := l3(f)
	if err != nil {
		return nil, err
	}
	v6 := etype == etherIPv6
	switch {
	case etype == etherIPv4 && nh+20 <= len(f) && f[nh]>>4 == 4:
	case v6 && nh+40 <= len(f) && f[nh]>>4 == 6:
	default:
		return nil, fmt.Errorf("gso frame with ethertype %#x: %w", etype, errMalformed)
	}
	if typ := h.gsoType &^ gsoECN; (typ == gsoTCPv4 && v6) || (typ == gsoTCPv6 && !v6) {
		return nil, fmt.Errorf("gso type %#x on ethertype %#x: %w", h.gsoType, etype, errMalformed)
	}
	l4 := int(h.csumStart)
	if h.flags&vnetNeedsCsum == 0 {
		if v6 {
			l4 = nh + 40
		} else {
			l4 = nh + int(f[nh]&0x0f)*4
		}
	}
	proto := uint8(protoTCP)
	hdrEnd := l4 + 8
	if h.gsoType&^gsoECN == gsoUDPL4 {
		proto = protoUDP
	} else if l4+20 <= len(f) {
		hdrEnd = l4 + int(f[l4+12]>>4)*4
	}
	mss := int(h.gsoSize)
	minL4 := nh + 40
	if !v6 {
		minL4 = nh + int(f[nh]&0x0f)*4
	}
	if l4 < minL4 || minL4 < nh+20 || hdrEnd > len(f) || (proto == protoTCP && hdrEnd < l4+20) || mss == 0 {
		return nil, fmt.Errorf("gso headers (l4 %d, end %d, mss %d, len %d): %w", l4, hdrEnd, mss, len(f), errMalformed)
	}
	payload := f[hdrEnd:]
	be := binary.BigEndian
	id0 := be.Uint16(f[nh+4:])
	seq0 := be.Uint32(f[l4+4:])
	n := max(1, (len(payload)+mss-1)/mss)
	out := make([][]byte, 0, n)
	for i := range n {
		start, end := i*mss, min((i+1)*mss, len(payload))
		seg := make([]byte, hdrEnd+end-start)
		copy(seg, f[:hdrEnd])
		copy(seg[hdrEnd:], payload[start:end])
		if v6 {
			be.PutUint16(seg[nh+4:], uint16(len(seg)-nh-40))
		} else {
			ihl := int(seg[nh]&0x0f) * 4
			be.PutUint16(seg[nh+2:], uint16(len(seg)-nh))
			be.PutUint16(seg[nh+4:], id0+uint16(i))
			be.PutUint16(seg[nh+10:], 0)
			putChecksum(seg[nh+10:], fold(sum16(seg[nh:nh+ihl], 0)))
		}
		l4len := len(seg) - l4
		csumAt := l4 + 16
		if proto == protoTCP {
			be.PutUint32(seg[l4+4:], seq0+uint32(start))
			if end != len(payload) {
				seg[l4+13] &^= 0x01 | 0x08 // FIN, PSH
			}
			if i > 0 {
				seg[l4+13] &^= 0x80 // CWR
			}
		} else {
			be.PutUint16(seg[l4+4:], uint16(l4len))
			csumAt = l4 + 6
		}
		be.PutUint16(seg[csumAt:], 0)
		putChecksum(seg[csumAt:], fold(sum16(seg[l4:], pseudoSum(seg, nh, v6, proto, l4len))))
		out = append(out, seg)
	}
	return out, nil
}
