package policy

import (
	"errors"
	"strings"
	"testing"
)

func TestNewEveryName(t *testing.T) {
	for _, c := range []struct {
		name       string
		inputs     Input // 0: not an InputUser
		membership bool
		finisher   bool
	}{
		{NameRoundRobin, 0, false, false},
		{NameConsistentHash, InputKey, true, false},
		{NameRandom, 0, false, false},
		{NamePowerOfTwo, 0, false, false},
		{NameLeastLoaded, 0, false, false},
		{NameStickyLeastLoaded, InputSessionID, true, true},
		{NameCacheAware, InputText, false, false},
		{NameRendezvousHash, InputKey, true, false},
	} {
		for _, cfg := range []Config{{}, DefaultConfig()} {
			p, err := New(c.name, cfg)
			if err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			var inputs Input
			if iu, ok := p.(InputUser); ok {
				inputs = iu.Inputs()
			}
			_, membership := p.(MembershipAware)
			_, finisher := p.(SessionFinisher)
			if inputs != c.inputs || membership != c.membership || finisher != c.finisher {
				t.Errorf("%s: inputs %b membership %v finisher %v", c.name, inputs, membership, finisher)
			}
		}
	}
	if len(Names()) != 8 {
		t.Fatalf("Names() = %v", Names())
	}
}

func TestNewErrors(t *testing.T) {
	_, err := New("least_conn", Config{})
	if !errors.Is(err, ErrUnknownPolicy) {
		t.Fatalf("err = %v", err)
	}
	for _, name := range Names() {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error %q does not list %s", err, name)
		}
	}
	for _, c := range []struct {
		name string
		cfg  Config
		want error
	}{
		{NameConsistentHash, Config{Load: 0.5}, ErrRingConfig},
		{NameStickyLeastLoaded, Config{SessionTTL: -1}, ErrStickyConfig},
		{NameCacheAware, Config{CacheThreshold: 2}, ErrCacheAwareConfig},
	} {
		if _, err := New(c.name, c.cfg); !errors.Is(err, c.want) {
			t.Errorf("%s %+v: err = %v, want %v", c.name, c.cfg, err, c.want)
		}
	}
}
