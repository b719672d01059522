/**
 * `noop`: the listener for an 'error' whose outcome is handled elsewhere (a socket or stream must always
 * have one, or Node throws), and the callback where one is required but nothing is to be done. A module
 * of its own so that every layer can import it without an import cycle.
 */
export function noop(): void {}
