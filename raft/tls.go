package raft

import "errors"

// checkTLS refuses a Config.TLS the transport cannot honour.
func checkTLS(c Config) error {
	if c.TLS != nil {
		return errors.New("raft transport: TLS is not implemented yet")
	}
	return nil
}
