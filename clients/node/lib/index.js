// @collabedit/client: the collabedit.v1 gRPC contract from Node.js.
export * as protocol from './protocol/index.js';
export { loadProtos, protoDir, conformanceDir, enumValues, PROTO_FILES } from './proto.js';
export {
  CHANNEL_OPTIONS, RETRYABLE, UsageError, coordinatorClient, describeError, parseAddress, partyClient, readTlsFiles, unary,
} from './channels.js';
export { CoordinatorClient, TERMINAL_PHASES, backoffMs, phaseName } from './coordinator.js';
export { MaskingParty, RoundAborted, RoundError, loadPartyConfig, runParty } from './party.js';
export { StatisticsFolder, StatisticsError, STATS_FORMAT } from './stats.js';
export { editRequestsFromJson, readEditRequests } from './requests.js';
