//go:build !unix

package nginx

import "errors"

func signalGroup(int) error { return errors.New("not unix") }
