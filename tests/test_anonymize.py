"""WADO-URI anonymize=yes: the output checked attribute by attribute against PS3.15 Table E.1-1,
Basic Profile column (written out here, independently of dicomweb_wsgi.anonymize), and against the
Basic Profile's rules on sequences, UIDs, repeating groups and the PS3.10 file."""
from __future__ import annotations

import io
import re

import numpy as np
import pydicom
import pytest
from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from dicomweb_wsgi.anonymize import deidentify
from dicomweb_wsgi.model import is_valid_uid
from dicomweb_wsgi.testing import CT_IMAGE_STORAGE, dataset_bytes, make_dataset, new_uid, store
from .test_wado import _store_file
from .test_wado_uri import wado_url

# PS3.15 Table E.1-1 (2024b), Basic Profile column, transcribed for the tests in the table's own
# alphabetical order, one attribute a line; repeating groups and private attributes are tested apart.
TABLE_E_1_1: dict[str, str] = {
    "D": """
        (0018,11BB) Acquisition Field Of View Label
        (006A,0005) Annotation Group Label
        (006A,0003) Annotation Group UID
        (0044,0104) Assertion DateTime
        (0400,0562) Attribute Modification DateTime
        (300C,0127) Beam Hold Transition DateTime
        (0400,0115) Certificate of Signer
        (0012,0081) Clinical Trial Protocol Ethics Committee Name
        (0012,0020) Clinical Trial Protocol ID
        (0012,0010) Clinical Trial Sponsor Name
        (0012,0040) Clinical Trial Subject ID
        (0012,0042) Clinical Trial Subject Reading ID
        (0040,0512) Container Identifier
        (0040,A730) Content Sequence
        (0008,0107) Context Group Local Version
        (0008,0106) Context Group Version
        (0040,A121) Date
        (0040,A120) DateTime
        (0018,9701) Decay Correction DateTime
        (2100,0140) Destination AE
        (3010,002D) Device Label
        (0400,0105) Digital Signature DateTime
        (0068,6226) Effective DateTime
        (0042,0011) Encapsulated Document
        (3010,0035) Entity Label
        (3010,0038) Entity Long Label
        (0018,9804) Exclusion Start DateTime
        (0034,0002) Flow Identifier
        (0034,0001) Flow Identifier Sequence
        (0018,9074) Frame Acquisition DateTime
        (0034,0007) Frame Origin Timestamp
        (0018,9151) Frame Reference DateTime
        (0018,9623) Functional Sync Pulse
        (0070,0001) Graphic Annotation Sequence
        (0072,000A) Hanging Protocol Creation DateTime
        (003A,0314) Impedance Measurement DateTime
        (0068,6270) Information Issue DateTime
        (300A,0741) Interlock DateTime
        (300A,0742) Interlock Description
        (300A,0783) Interlock Origin Description
        (0400,0563) Modifying System
        (300A,0760) Override DateTime
        (0040,1101) Person Identification Code Sequence
        (0040,A123) Person Name
        (300A,0002) RT Plan Label
        (3010,0054) RT Prescription Label
        (300A,062A) RT Tolerance Set Label
        (300A,0619) Radiation Dose Identification Label
        (300A,0623) Radiation Dose In-Vivo Measurement Label
        (300A,067C) Radiation Generation Mode Label
        (0400,0565) Reason for the Attribute Modification
        (300A,073A) Recorded RT Control Point DateTime
        (0040,A13A) Referenced DateTime
        (3008,0162) Safe Position Exit Date
        (3008,0164) Safe Position Exit Time
        (3008,0166) Safe Position Return Date
        (3008,0168) Safe Position Return Time
        (0072,005E) Selector AE Value
        (0072,005F) Selector AS Value
        (0072,0061) Selector DA Value
        (0072,0063) Selector DT Value
        (0072,0066) Selector LO Value
        (0072,0068) Selector LT Value
        (0072,0065) Selector OB Value
        (0072,006A) Selector PN Value
        (0072,006C) Selector SH Value
        (0072,006E) Selector ST Value
        (0072,006B) Selector TM Value
        (0072,006D) Selector UN Value
        (0072,0071) Selector UR Value
        (0072,0070) Selector UT Value
        (0018,936A) Source End DateTime
        (0034,0005) Source Identifier
        (0018,9369) Source Start DateTime
        (300A,022C) Source Strength Reference Date
        (300A,022E) Source Strength Reference Time
        (0040,0551) Specimen Identifier
        (3006,0002) Structure Set Label
        (0040,A122) Time
        (3008,0024) Treatment Control Point Date
        (3008,0025) Treatment Control Point Time
        (300A,0608) Treatment Position Group Label
        (300A,0736) Treatment Tolerance Violation DateTime
        (300A,0734) Treatment Tolerance Violation Description
        (3010,0033) User Content Label
        (3010,0034) User Content Long Label
        (0040,A030) Verification DateTime
        (0040,A075) Verifying Observer Name
        (0040,A073) Verifying Observer Sequence
        (0040,A027) Verifying Organization
        (0018,9371) X-Ray Detector ID
        (0018,9367) X-Ray Source ID
    """,
    "Z": """
        (0008,0050) Accession Number
        (0018,1203) Calibration DateTime
        (0012,0060) Clinical Trial Coordinating Center Name
        (0012,0021) Clinical Trial Protocol Name
        (0012,0030) Clinical Trial Site ID
        (0012,0031) Clinical Trial Site Name
        (0012,0050) Clinical Trial Time Point ID
        (3010,000F) Conceptual Volume Combination Description
        (3010,0017) Conceptual Volume Description
        (0008,009C) Consulting Physician's Name
        (3010,001B) Device Alternate Identifier
        (0040,2017) Filler Order Number / Imaging Service Request
        (3010,007F) Fractionation Notes
        (0040,0513) Issuer of the Container Identifier Sequence
        (0040,0562) Issuer of the Specimen Identifier Sequence
        (3010,0043) Manufacturer's Device Identifier
        (0040,A082) Participation DateTime
        (0010,0030) Patient's Birth Date
        (0010,0010) Patient's Name
        (0010,0040) Patient's Sex
        (0040,2016) Placer Order Number / Imaging Service Request
        (3010,007B) Prescription Notes
        (3010,0081) Prescription Notes Sequence
        (3006,00A6) ROI Interpreter
        (3006,0026) ROI Name
        (300A,0615) RT Accessory Device Slot ID
        (300A,0611) RT Accessory Holder Slot ID
        (3010,005A) RT Physician Intent Narrative
        (300A,067D) Radiation Generation Mode Description
        (3010,005C) Reason for Superseding
        (0008,0090) Referring Physician's Name
        (300E,0004) Review Date
        (300E,0005) Review Time
        (0400,0564) Source of Previous Values
        (0040,0610) Specimen Preparation Sequence
        (3006,0008) Structure Set Date
        (3006,0009) Structure Set Time
        (0008,0020) Study Date
        (0020,0010) Study ID
        (0008,0030) Study Time
        (3010,007A) Treatment Technique Notes
        (0040,A088) Verifying Observer Identification Code Sequence
    """,
    "X": """
        (0018,4000) Acquisition Comments
        (0018,9424) Acquisition Protocol Description
        (0040,4035) Actual Human Performers Sequence
        (0010,21B0) Additional Patient History
        (0040,A353) Address (Trial)
        (0038,0010) Admission ID
        (0038,0020) Admitting Date
        (0008,1084) Admitting Diagnoses Code Sequence
        (0008,1080) Admitting Diagnoses Description
        (0038,0021) Admitting Time
        (0000,1000) Affected SOP Instance UID
        (0010,2110) Allergies
        (006A,0006) Annotation Group Description
        (0044,0004) Approval Status DateTime
        (4000,0010) Arbitrary
        (0044,0105) Assertion Expiration DateTime
        (0040,A078) Author Observer Sequence
        (300A,00C3) Beam Description
        (300A,00DD) Bolus Description
        (0010,1081) Branch of Service
        (0014,407E) Calibration Date
        (0014,407C) Calibration Time
        (0016,004D) Camera Owner Name
        (0018,1007) Cassette ID
        (0400,0310) Certified Timestamp
        (0012,0082) Clinical Trial Protocol Ethics Committee Approval Number
        (0012,0072) Clinical Trial Series Description
        (0012,0071) Clinical Trial Series ID
        (0012,0051) Clinical Trial Time Point Description
        (0040,0310) Comments on Radiation Dose
        (0040,0280) Comments on the Performed Procedure Step
        (300A,02EB) Compensator Description
        (0040,3001) Confidentiality Constraint on Patient Data Description
        (0008,009D) Consulting Physician Identification Sequence
        (0050,001B) Container Component ID
        (0040,051A) Container Description
        (0070,0086) Content Creator's Identification Code Sequence
        (0018,1042) Contrast/Bolus Start Time
        (0018,1043) Contrast/Bolus Stop Time
        (0018,A002) Contribution DateTime
        (0018,A003) Contribution Description
        (0010,2150) Country of Residence
        (2100,0040) Creation Date
        (2100,0050) Creation Time
        (0040,A307) Current Observer (Trial)
        (0038,0300) Current Patient Location
        (0008,0025) Curve Date
        (0008,0035) Curve Time
        (0040,A07C) Custodial Organization Sequence
        (FFFC,FFFC) Data Set Trailing Padding
        (0040,A110) Date of Document or Verbal Transaction (Trial)
        (0018,1205) Date of Installation
        (0018,1200) Date of Last Calibration
        (0018,1204) Date of Manufacture
        (0018,1012) Date of Secondary Capture
        (0018,1202) DateTime of Last Calibration
        (0018,937F) Decomposition Description
        (0008,2111) Derivation Description
        (0050,0020) Device Description
        (0016,004B) Device Setting Description
        (FFFA,FFFA) Digital Signatures Sequence
        (0038,0030) Discharge Date
        (0038,0040) Discharge Diagnosis Description
        (0038,0032) Discharge Time
        (300A,079A) Displacement Reference Label
        (4008,011A) Distribution Address
        (4008,0119) Distribution Name
        (300A,0016) Dose Reference Description
        (3010,0037) Entity Description
        (3010,0036) Entity Name
        (300A,0676) Equipment Frame of Reference Description
        (0012,0087) Ethics Committee Approval Effectiveness End Date
        (0012,0086) Ethics Committee Approval Effectiveness Start Date
        (0010,2160) Ethnic Group
        (0040,4011) Expected Completion DateTime
        (003A,032B) Filter Lookup Table Description
        (0040,A023) Findings Group Recording Date (Trial)
        (0040,A024) Findings Group Recording Time (Trial)
        (300A,0196) Fixation Device Description
        (300A,0072) Fraction Group Description
        (0020,9158) Frame Comments
        (0016,0076) GPS Altitude
        (0016,0075) GPS Altitude Ref
        (0016,008C) GPS Area Information
        (0016,007B) GPS DOP
        (0016,008D) GPS Date Stamp
        (0016,0088) GPS Dest Bearing
        (0016,008A) GPS Dest Distance
        (0016,0089) GPS Dest Distance Ref
        (0016,0086) GPS Dest Longitude
        (0016,0085) GPS Dest Longitude Ref
        (0016,0087) GPS Dest Bearing Ref
        (0016,0084) GPS Dest Latitude
        (0016,0083) GPS Dest Latitude Ref
        (0016,008E) GPS Differential
        (0016,0081) GPS Img Direction
        (0016,0080) GPS Img Direction Ref
        (0016,0072) GPS Latitude
        (0016,0071) GPS Latitude Ref
        (0016,0074) GPS Longitude
        (0016,0073) GPS Longitude Ref
        (0016,0082) GPS Map Datum
        (0016,007A) GPS Measure Mode
        (0016,008B) GPS Processing Method
        (0016,0078) GPS Satellites
        (0016,007D) GPS Speed
        (0016,007C) GPS Speed Ref
        (0016,0079) GPS Status
        (0016,0077) GPS Time Stamp
        (0016,007F) GPS Track
        (0016,007E) GPS Track Ref
        (0016,0070) GPS Version ID
        (0018,1008) Gantry ID
        (0018,1005) Generator ID
        (0040,E004) HL7 Document Effective Time
        (0040,4037) Human Performer's Name
        (0040,4036) Human Performer's Organization
        (0088,0200) Icon Image Sequence
        (0008,4000) Identifying Comments
        (0020,4000) Image Comments
        (0028,4000) Image Presentation Comments
        (0040,2400) Imaging Service Request Comments
        (4008,0300) Impressions
        (0008,0015) Instance Coercion DateTime
        (0400,0600) Instance Origin Status
        (0008,0081) Institution Address
        (0008,1040) Institutional Department Name
        (0008,1041) Institutional Department Type Code Sequence
        (0010,1050) Insurance Plan Identification
        (3010,0085) Intended Fraction Start Time
        (0040,1011) Intended Recipients of Results Identification Sequence
        (4008,0112) Interpretation Approval Date
        (4008,0113) Interpretation Approval Time
        (4008,0111) Interpretation Approver Sequence
        (4008,010C) Interpretation Author
        (4008,0115) Interpretation Diagnosis Description
        (4008,0200) Interpretation ID
        (4008,0202) Interpretation ID Issuer
        (4008,0100) Interpretation Recorded Date
        (4008,0101) Interpretation Recorded Time
        (4008,0102) Interpretation Recorder
        (4008,010B) Interpretation Text
        (4008,010A) Interpretation Transcriber
        (4008,0108) Interpretation Transcription Date
        (4008,0109) Interpretation Transcription Time
        (0018,0035) Intervention Drug Start Time
        (0018,0027) Intervention Drug Stop Time
        (0040,2004) Issue Date of Imaging Service Request
        (0040,2005) Issue Time of Imaging Service Request
        (0038,0011) Issuer of Admission ID
        (0038,0014) Issuer of Admission ID Sequence
        (0012,0022) Issuer of Clinical Trial Protocol ID
        (0012,0073) Issuer of Clinical Trial Series ID
        (0012,0032) Issuer of Clinical Trial Site ID
        (0012,0041) Issuer of Clinical Trial Subject ID
        (0012,0043) Issuer of Clinical Trial Subject Reading ID
        (0012,0055) Issuer of Clinical Trial Time Point ID
        (0010,0021) Issuer of Patient ID
        (0038,0061) Issuer of Service Episode ID
        (0038,0064) Issuer of Service Episode ID Sequence
        (0010,21D0) Last Menstrual Date
        (0016,004F) Lens Make
        (0016,0050) Lens Model
        (0016,0051) Lens Serial Number
        (0016,004E) Lens Specification
        (0050,0021) Long Device Description
        (0400,0404) MAC
        (0016,002B) Maker Note
        (0010,2000) Medical Alerts
        (0010,1090) Medical Record Locator
        (0010,1080) Military Rank
        (0400,0550) Modified Attributes Sequence
        (0020,3403) Modified Image Date
        (0020,3406) Modified Image Description
        (0020,3405) Modified Image Time
        (0020,3401) Modifying Device ID
        (0018,937B) Multi-energy Acquisition Description
        (0008,1060) Name of Physician(s) Reading Study
        (0040,1010) Names of Intended Recipients of Results
        (0008,1000) Network ID
        (0400,0552) Nonconforming Data Element Value
        (0400,0551) Nonconforming Modified Attributes Sequence
        (0040,A192) Observation Date (Trial)
        (0040,A033) Observation Start DateTime
        (0040,A193) Observation Time (Trial)
        (0010,2180) Occupation
        (0040,2010) Order Callback Phone Number
        (0040,2011) Order Callback Telecom Information
        (0040,2008) Order Entered By
        (0040,2009) Order Enterer's Location
        (0400,0561) Original Attributes Sequence
        (2100,0070) Originator
        (0012,0023) Other Clinical Trial Protocol IDs Sequence
        (0010,1000) Other Patient IDs
        (0010,1002) Other Patient IDs Sequence
        (0010,1001) Other Patient Names
        (0008,0024) Overlay Date
        (0008,0034) Overlay Time
        (0040,A07A) Participant Sequence
        (0010,4000) Patient Comments
        (300A,0794) Patient Setup Photo Description
        (0038,0500) Patient State
        (0040,1004) Patient Transport Arrangements
        (300A,0792) Patient Treatment Preparation Method Description
        (300A,078E) Patient Treatment Preparation Procedure Parameter Description
        (0010,1040) Patient's Address
        (0010,1010) Patient's Age
        (0010,1005) Patient's Birth Name
        (0010,0032) Patient's Birth Time
        (0038,0400) Patient's Institution Residence
        (0010,0050) Patient's Insurance Plan Code Sequence
        (0010,1060) Patient's Mother's Birth Name
        (0010,0101) Patient's Primary Language Code Sequence
        (0010,0102) Patient's Primary Language Modifier Code Sequence
        (0010,21F0) Patient's Religious Preference
        (0010,1020) Patient's Size
        (0010,2155) Patient's Telecom Information
        (0010,2154) Patient's Telephone Numbers
        (0010,1030) Patient's Weight
        (0040,0243) Performed Location
        (0040,0254) Performed Procedure Step Description
        (0040,0250) Performed Procedure Step End Date
        (0040,4051) Performed Procedure Step End DateTime
        (0040,0251) Performed Procedure Step End Time
        (0040,0253) Performed Procedure Step ID
        (0040,0244) Performed Procedure Step Start Date
        (0040,4050) Performed Procedure Step Start DateTime
        (0040,0245) Performed Procedure Step Start Time
        (0040,0241) Performed Station AE Title
        (0040,4030) Performed Station Geographic Location Code Sequence
        (0040,0242) Performed Station Name
        (0040,4028) Performed Station Name Code Sequence
        (0008,1052) Performing Physician Identification Sequence
        (0008,1050) Performing Physician's Name
        (0040,1102) Person's Address
        (0040,1104) Person's Telecom Information
        (0040,1103) Person's Telephone Numbers
        (4008,0114) Physician Approving Interpretation
        (0008,1062) Physician(s) Reading Study Identification Sequence
        (0008,1048) Physician(s) of Record
        (0008,1049) Physician(s) of Record Identification Sequence
        (0018,1004) Plate ID
        (3002,0123) Position Acquisition Template Description
        (3002,0121) Position Acquisition Template Name
        (0040,0012) Pre-Medication
        (0010,21C0) Pregnancy Status
        (300A,000E) Prescription Description
        (0070,0082) Presentation Creation Date
        (0070,0083) Presentation Creation Time
        (3010,0061) Prior Treatment Dose Description
        (0040,4052) Procedure Step Cancellation DateTime
        (0044,000B) Product Expiration DateTime
        (0008,1088) Pyramid Description
        (0020,0027) Pyramid Label
        (3006,004D) ROI Creator Sequence
        (3006,002D) ROI DateTime
        (3006,0028) ROI Description
        (3006,0038) ROI Generation Description
        (3006,004E) ROI Interpreter Sequence
        (3006,002E) ROI Observation DateTime
        (3006,0088) ROI Observation Description
        (3006,0085) ROI Observation Label
        (300A,0004) RT Plan Description
        (300A,0003) RT Plan Name
        (0018,1078) Radiopharmaceutical Start DateTime
        (0018,1072) Radiopharmaceutical Start Time
        (0018,1079) Radiopharmaceutical Stop DateTime
        (0018,1073) Radiopharmaceutical Stop Time
        (300C,0113) Reason for Omission Description
        (0040,100A) Reason for Requested Procedure Code Sequence
        (0032,1030) Reason for Study
        (0032,1066) Reason for Visit
        (0032,1067) Reason for Visit Code Sequence
        (0040,2001) Reason for the Imaging Service Request
        (0040,1002) Reason for the Requested Procedure
        (0074,1234) Receiving AE
        (0400,0402) Referenced Digital Signature Sequence
        (0038,0004) Referenced Patient Alias Sequence
        (0010,1100) Referenced Patient Photo Sequence
        (0008,1120) Referenced Patient Sequence
        (0400,0403) Referenced SOP Instance MAC Sequence
        (0008,0096) Referring Physician Identification Sequence
        (0008,0092) Referring Physician's Address
        (0008,0094) Referring Physician's Telephone Numbers
        (0010,2152) Region of Residence
        (0040,0275) Request Attributes Sequence
        (0032,1070) Requested Contrast Agent
        (0040,1400) Requested Procedure Comments
        (0040,1001) Requested Procedure ID
        (0040,1005) Requested Procedure Location
        (0018,9937) Requested Series Description
        (0074,1236) Requesting AE
        (0032,1032) Requesting Physician
        (0032,1033) Requesting Service
        (0018,9185) Respiratory Motion Compensation Technique Description
        (0010,2299) Responsible Organization
        (0010,2297) Responsible Person
        (4008,4000) Results Comments
        (4008,0118) Results Distribution List Sequence
        (4008,0040) Results ID
        (4008,0042) Results ID Issuer
        (0008,0054) Retrieve AE Title
        (0100,0420) SOP Authorization DateTime
        (0038,001A) Scheduled Admission Date
        (0038,001B) Scheduled Admission Time
        (0038,001C) Scheduled Discharge Date
        (0038,001D) Scheduled Discharge Time
        (0040,4034) Scheduled Human Performers Sequence
        (0038,001E) Scheduled Patient Institution Residence
        (0040,000B) Scheduled Performing Physician Identification Sequence
        (0040,0006) Scheduled Performing Physician's Name
        (0040,0007) Scheduled Procedure Step Description
        (0040,0004) Scheduled Procedure Step End Date
        (0040,0005) Scheduled Procedure Step End Time
        (0040,4008) Scheduled Procedure Step Expiration DateTime
        (0040,0009) Scheduled Procedure Step ID
        (0040,0011) Scheduled Procedure Step Location
        (0040,4010) Scheduled Procedure Step Modification DateTime
        (0040,0002) Scheduled Procedure Step Start Date
        (0040,4005) Scheduled Procedure Step Start DateTime
        (0040,0003) Scheduled Procedure Step Start Time
        (0040,0001) Scheduled Station AE Title
        (0040,4027) Scheduled Station Geographic Location Code Sequence
        (0040,0010) Scheduled Station Name
        (0040,4025) Scheduled Station Name Code Sequence
        (0032,1020) Scheduled Study Location
        (0032,1021) Scheduled Study Location AE Title
        (0032,1000) Scheduled Study Start Date
        (0032,1001) Scheduled Study Start Time
        (0032,1010) Scheduled Study Stop Date
        (0032,1011) Scheduled Study Stop Time
        (0008,103E) Series Description
        (0038,0062) Service Episode Description
        (0038,0060) Service Episode ID
        (300A,01B2) Setup Technique Description
        (300A,01A6) Shielding Device Description
        (0040,06FA) Slide Identifier
        (0010,21A0) Smoking Status
        (300A,0216) Source Manufacturer
        (0038,0050) Special Needs
        (0040,050A) Specimen Accession Number
        (0040,0602) Specimen Detailed Description
        (0040,0600) Specimen Short Description
        (0008,0055) Station AE Title
        (3006,0006) Structure Set Description
        (3006,0004) Structure Set Name
        (0032,1040) Study Arrival Date
        (0032,1041) Study Arrival Time
        (0032,4000) Study Comments
        (0032,1050) Study Completion Date
        (0032,1051) Study Completion Time
        (0008,1030) Study Description
        (0032,0012) Study ID Issuer
        (0032,0034) Study Read Date
        (0032,0035) Study Read Time
        (0032,0032) Study Verified Date
        (0032,0033) Study Verified Time
        (0044,0010) Substance Administration DateTime
        (0040,A354) Telephone Number (Trial)
        (0040,DB07) Template Local Version
        (0040,DB06) Template Version
        (4000,4000) Text Comments
        (2030,0020) Text String
        (0040,A112) Time of Document Creation or Verbal Transaction (Trial)
        (0018,1201) Time of Last Calibration
        (0018,1014) Time of Secondary Capture
        (0008,0201) Timezone Offset From UTC
        (0088,0910) Topic Author
        (0088,0912) Topic Keywords
        (0088,0906) Topic Subject
        (0088,0904) Topic Title
        (0018,5011) Transducer Identification Sequence
        (300A,000B) Treatment Sites
        (0018,100A) UDI Sequence
        (0018,1009) Unique Device Identifier
        (0040,A352) Verbal Source (Trial)
        (0040,A358) Verbal Source Identifier Code Sequence (Trial)
        (0038,4000) Visit Comments
        (0018,9373) X-Ray Detector Label
        (003A,0329) Waveform Filter Description
    """,
    "U": """
        (0008,0017) Acquisition UID
        (0020,9161) Concatenation UID
        (3010,0006) Conceptual Volume UID
        (3010,0013) Constituent Conceptual Volume UID
        (0018,1002) Device UID
        (0400,0100) Digital Signature UID
        (0020,9164) Dimension Organization UID
        (300A,0013) Dose Reference UID
        (3010,006E) Dosimetric Objective UID
        (0008,0058) Failed SOP Instance UID List
        (0070,031A) Fiducial UID
        (0020,0052) Frame of Reference UID
        (0008,0014) Instance Creator UID
        (0008,3010) Irradiation Event UID
        (0028,1214) Large Palette Color Lookup Table UID
        (0018,100B) Manufacturer's Device Class UID
        (0002,0003) Media Storage SOP Instance UID
        (003A,0310) Multiplex Group UID
        (0040,A402) Observation Subject UID (Trial)
        (0040,A171) Observation UID
        (0028,1199) Palette Color Lookup Table UID
        (300A,0650) Patient Setup UID
        (0070,1101) Presentation Display Collection UID
        (0070,1102) Presentation Sequence Collection UID
        (0008,0019) Pyramid UID
        (3010,003B) RT Treatment Phase UID
        (3010,000B) Referenced Conceptual Volume UID
        (300A,0083) Referenced Dose Reference UID
        (3010,006F) Referenced Dosimetric Objective UID
        (3010,0031) Referenced Fiducials UID
        (3006,0024) Referenced Frame of Reference UID
        (0040,4023) Referenced General Purpose Scheduled Procedure Step Transaction UID
        (0040,A172) Referenced Observation UID (Trial)
        (0008,1155) Referenced SOP Instance UID
        (0004,1511) Referenced SOP Instance UID in File
        (300A,0785) Referenced Treatment Position Group UID
        (3006,00C2) Related Frame of Reference UID
        (0000,1001) Requested SOP Instance UID
        (0008,0018) SOP Instance UID
        (0020,000E) Series Instance UID
        (3010,0015) Source Conceptual Volume UID
        (0064,0003) Source Frame of Reference UID
        (0040,0554) Specimen UID
        (0088,0140) Storage Media File-set UID
        (0020,000D) Study Instance UID
        (0020,0200) Synchronization Frame of Reference UID
        (0018,2042) Target UID
        (0040,DB0D) Template Extension Creator UID
        (0040,DB0C) Template Extension Organization UID
        (0062,0021) Tracking UID
        (0008,1195) Transaction UID
        (300A,0609) Treatment Position Group UID
        (300A,0700) Treatment Session UID
        (0040,A124) UID
    """,
    "Z/D": """
        (0070,0084) Content Creator's Name
        (0008,0023) Content Date
        (0008,0033) Content Time
        (0018,0010) Contrast/Bolus Agent
        (0018,9919) Instruction Performed DateTime
        (0010,0020) Patient ID
    """,
    "X/Z": """
        (0040,0555) Acquisition Context Sequence
        (0008,0022) Acquisition Date
        (0008,0032) Acquisition Time
        (2200,0005) Barcode Value
        (2200,0002) Label Text
        (0010,2203) Patient's Sex Neutered
        (0008,1110) Referenced Study Sequence
        (0032,1060) Requested Procedure Description
        (300E,0008) Reviewer Name
        (3008,0105) Source Serial Number
        (300A,00B2) Treatment Machine Name
    """,
    "X/D": """
        (0018,1400) Acquisition Device Processing Description
        (0018,700C) Date of Last Detector Calibration
        (0018,700A) Detector ID
        (0018,9517) End Acquisition DateTime
        (3008,0054) First Treatment Date
        (0008,0012) Instance Creation Date
        (3010,004D) Intended Phase End Date
        (3010,004C) Intended Phase Start Date
        (3008,0056) Most Recent Treatment Date
        (0040,A032) Observation DateTime
        (0008,1072) Operator Identification Sequence
        (0018,1030) Protocol Name
        (300A,0006) RT Plan Date
        (300A,0007) RT Plan Time
        (3010,0056) RT Treatment Approach Label
        (0008,0021) Series Date
        (0008,0031) Series Time
        (0018,9516) Start Acquisition DateTime
        (0018,700E) Time of Last Detector Calibration
        (3008,0250) Treatment Date
        (3010,0077) Treatment Site
        (3008,0251) Treatment Time
    """,
    "X/Z/D": """
        (0008,002A) Acquisition DateTime
        (0018,1000) Device Serial Number
        (0008,0013) Instance Creation Time
        (0008,0082) Institution Code Sequence
        (0008,0080) Institution Name
        (0008,1070) Operators' Name
        (0008,1111) Referenced Performed Procedure Step Sequence
        (0008,1010) Station Name
    """,
    "X/Z/U*": """
        (0008,1140) Referenced Image Sequence
        (0008,2112) Source Image Sequence
    """,
}


def _parse_table() -> dict[int, str]:
    table: dict[int, str] = {}
    for code, text in TABLE_E_1_1.items():
        for group, element in re.findall(r"\(([0-9A-F]{4}),([0-9A-F]{4})\)", text):
            table[int(group + element, 16)] = code
    return table


TABLE = _parse_table()
# Not attributes of a stored data set: command elements (0000), File Meta (0002), DICOMDIR (0004).
OUTSIDE_DATA_SET = (0x0000, 0x0002, 0x0004)
# Set by make_dataset with real values; replaced like any other U attribute.
INSTANCE_UIDS = (0x00080018, 0x0020000D, 0x0020000E)
# keyword -> value in the test data set (None: make_dataset's own) of attributes Table E.1-1 does not
# list: kept.
KEPT: dict[str, object] = {
    "SOPClassUID": None, "Modality": None, "Manufacturer": "ACME", "BodyPartExamined": "HEAD",
    "SliceThickness": "1.0", "Rows": None, "Columns": None, "SpecificCharacterSet": None,
}
TOKEN = re.compile(r"[TCM][0-9A-F]{8}")


def _value(tag: int, vr: str) -> object:
    """A value of the VR that can be recognised in the output (text carries a token)."""
    text = f"T{tag:08X}"
    by_vr: dict[str, object] = {
        "AS": "042Y", "DA": "20240102", "TM": "101500", "DT": "20240102101500", "DS": "42.5",
        "IS": "42", "US": 42, "SS": 42, "UL": 42, "SL": 42, "UV": 42, "SV": 42, "FL": 42.5,
        "FD": 42.5, "AT": 0x00100010, "UI": new_uid(),
    }
    if vr in by_vr:
        return by_vr[vr]
    if vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
        return text[:8].encode()
    if vr == "SQ":
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = f"C{tag:08X}", "99TEST", f"M{tag:08X}"
        item.ReferencedSOPClassUID = CT_IMAGE_STORAGE
        item.ReferencedSOPInstanceUID = new_uid()
        return Sequence([item])
    return text


def rich_dataset() -> Dataset:
    """An image carrying a value in every attribute of Table E.1-1 the data dictionary knows, plus
    references, private data, an overlay plane and curve data."""
    ds = make_dataset(rows=8, columns=8, **{k: v for k, v in KEPT.items() if v is not None})
    for tag in TABLE:
        if tag >> 16 in OUTSIDE_DATA_SET or tag in INSTANCE_UIDS or not dictionary_has_tag(tag):
            continue
        vr = dictionary_VR(tag).split(" or ")[0]
        ds.add_new(tag, vr, _value(tag, vr))
    ref = Dataset()
    ref.ReferencedSOPClassUID = ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID  # a reference to itself: must stay consistent
    other = Dataset()
    other.ReferencedSOPClassUID = ds.SOPClassUID
    other.ReferencedSOPInstanceUID = new_uid()
    ds.SourceImageSequence = Sequence([ref, other])
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study_ref.ReferencedSOPInstanceUID = ds.StudyInstanceUID
    ds.ReferencedStudySequence = Sequence([study_ref])
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "T-A0100", "SRT", "Brain"
    ds.AnatomicRegionSequence = Sequence([code])
    block = ds.private_block(0x0009, "ACME 1.0", create=True)
    block.add_new(0x01, "LO", "private patient data")
    for element, vr, value in ((0x0010, "US", 8), (0x0011, "US", 8), (0x0040, "CS", "G"), (0x0050, "SS", [1, 1]),
                               (0x0100, "US", 1), (0x0102, "US", 0), (0x3000, "OW", b"\x00\x01" * 4),
                               (0x4000, "LT", "overlay comment")):
        ds.add_new(0x60000000 | element, vr, value)
    ds.add_new(0x50000005, "US", 1)
    ds.add_new(0x50003000, "OW", b"\x00\x01" * 4)
    ds.file_meta.SourceApplicationEntityTitle = "MODALITY_AE"
    return ds


@pytest.fixture
def stored(dicomweb_client):
    ds = rich_dataset()
    store(dicomweb_client, [ds])
    return ds


def anonymized(client, ds: Dataset, **params: object) -> tuple[Dataset, bytes]:
    params.setdefault("contentType", "application/dicom")
    resp = client.get(wado_url(ds, anonymize="yes", **params), status=200)
    assert resp.headers["Content-Type"] == "application/dicom"  # no transfer-syntax parameter (PS3.18 §8.7.3.5.2)
    return pydicom.dcmread(io.BytesIO(resp.body)), resp.body


def _values(value: object) -> list[object]:
    return list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]


def _empty(elem: DataElement) -> bool:
    if elem.VR == "SQ":
        return len(elem.value) == 0
    return all(v in (None, "", b"") for v in _values(elem.value))


def _leaves(elem: DataElement) -> list[tuple[int, str]]:
    """(tag, text) of every value under ``elem``, items included."""
    if elem.VR != "SQ":
        return [(int(elem.tag), str(v)) for v in _values(elem.value)]
    return [leaf for item in elem.value for sub in item for leaf in _leaves(sub)]


def _tokens(elem: DataElement) -> set[str]:
    return {text for _, text in _leaves(elem) if TOKEN.fullmatch(text)}


def _referenced_uids(elem: DataElement) -> list[str]:
    return [text for tag, text in _leaves(elem) if tag == 0x00081155]


def _replaced(got: DataElement, old: DataElement) -> bool:
    """A non-empty value keeping nothing of the original (tokens, referenced instance UIDs)."""
    if _empty(got):
        return False
    if got.VR == "SQ":
        return not (_tokens(got) & _tokens(old)) and not set(_referenced_uids(got)) & set(_referenced_uids(old))
    return _values(got.value) != _values(old.value)


def _follows(code: str, got: DataElement | None, old: DataElement) -> bool:
    """Whether ``got`` is an outcome the action code allows (PS3.15 E.1.1 action codes)."""
    if code == "K":
        return got is not None and got.value == old.value
    if got is None:
        return "X" in code.split("/")
    if code == "U":
        return all(is_valid_uid(str(v)) for v in _values(got.value)) and _replaced(got, old)
    if code == "X/Z/U*":
        uids = _referenced_uids(got)
        return _empty(got) or (all(is_valid_uid(u) for u in uids) and not set(uids) & set(_referenced_uids(old)))
    allowed = set(code.split("/"))
    # Z allows an empty value or a dummy one (PS3.15 E.1.1), D only a dummy one.
    return ("Z" in allowed and (_empty(got) or _replaced(got, old))) or ("D" in allowed and _replaced(got, old))


def test_anonymize_every_table_attribute_gets_its_action(dicomweb_client, stored):
    got, body = anonymized(dicomweb_client, stored, transferSyntax="*")
    present = [tag for tag in TABLE if tag in stored]
    assert len(present) > 550  # every attribute of the table the data dictionary knows
    wrong = [f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {TABLE[tag]}: {got.get(tag)!r}" for tag in present
             if not _follows(TABLE[tag], got.get(tag), stored[tag])]
    assert wrong == []
    for keyword in KEPT:
        assert _follows("K", got.data_element(keyword), stored[keyword]), keyword
    # Nothing of a removed, emptied or replaced value is anywhere in the object.
    leaked = [token for tag in present if TABLE[tag] != "X/Z/U*" for token in _tokens(stored[tag])
              if token.encode() in body]
    assert leaked == []
    originals = [uid for tag in present if TABLE[tag] == "U" for _, uid in _leaves(stored[tag])]
    assert [uid for uid in originals if uid.encode() in body] == []


def test_anonymize_marks_identity_removed_and_method(dicomweb_client, stored):
    got, _ = anonymized(dicomweb_client, stored)
    assert got.PatientIdentityRemoved == "YES"
    assert got.DeidentificationMethod
    code = got.DeidentificationMethodCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("113100", "DCM")
    assert got.LongitudinalTemporalInformationModified == "REMOVED"


def test_anonymize_keeps_pixel_data_untouched(dicomweb_client, stored):
    got, _ = anonymized(dicomweb_client, stored, transferSyntax="*")
    assert got.PixelData == stored.PixelData


def test_anonymize_removes_private_and_overlay_data(dicomweb_client, stored):
    got, body = anonymized(dicomweb_client, stored)
    assert not any(elem.tag.is_private for elem in got)
    assert 0x60003000 not in got and 0x60004000 not in got
    assert b"private patient data" not in body and b"T00100010" not in body


def test_anonymize_removes_whole_overlay_planes_and_curves(dicomweb_client, stored):
    got, _ = anonymized(dicomweb_client, stored)
    overlay_groups = {elem.tag.group for elem in got if 0x6000 <= elem.tag.group <= 0x60FF}
    # PS3.3 C.9.2: Overlay Data is Type 1, so a plane without it would be an invalid Overlay Plane.
    assert all((group << 16 | 0x3000) in got for group in overlay_groups)
    assert not any(0x5000 <= elem.tag.group <= 0x50FF for elem in got)


def test_anonymize_cleans_sequences_and_keeps_references_consistent(dicomweb_client, stored):
    got, _ = anonymized(dicomweb_client, stored)
    refs = got.SourceImageSequence  # X/Z/U*: kept here, with the UIDs inside replaced
    assert refs[0].ReferencedSOPInstanceUID == got.SOPInstanceUID != stored.SOPInstanceUID
    assert refs[1].ReferencedSOPInstanceUID != stored.SourceImageSequence[1].ReferencedSOPInstanceUID
    assert refs[0].ReferencedSOPClassUID == stored.SOPClassUID
    assert "RequestAttributesSequence" not in got
    assert all(item.ReferencedSOPInstanceUID != stored.StudyInstanceUID
               for item in got.get("ReferencedStudySequence", []))
    assert got.AnatomicRegionSequence[0].CodeMeaning == "Brain"  # K: not in the table


def test_anonymize_replaces_file_meta_and_preamble(dicomweb_client, stored):
    got, body = anonymized(dicomweb_client, stored)
    assert body[:128] == b"\x00" * 128 and body[128:132] == b"DICM"
    assert got.file_meta.MediaStorageSOPInstanceUID == got.SOPInstanceUID
    assert got.file_meta.MediaStorageSOPClassUID == got.SOPClassUID
    assert "SourceApplicationEntityTitle" not in got.file_meta


def test_anonymize_uids_differ_between_requests(dicomweb_client, stored):
    first, _ = anonymized(dicomweb_client, stored)
    second, _ = anonymized(dicomweb_client, stored)
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert first.StudyInstanceUID != second.StudyInstanceUID


def test_anonymize_with_transcoding_keeps_pixel_values(dicomweb_client):
    original, _ = _store_file(dicomweb_client, "MR_small_implicit.dcm")
    got, _ = anonymized(dicomweb_client, original)
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert got.PatientName == "" and got.PatientIdentityRemoved == "YES"
    assert np.array_equal(got.pixel_array, original.pixel_array)


def _text_leaves(ds: Dataset) -> set[str]:
    """Free text, names and codes of a content tree (what D must not let through)."""
    found: set[str] = set()
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                found |= _text_leaves(item)
        elif elem.VR in ("LO", "SH", "ST", "LT", "UT", "PN", "UC") and elem.value:
            found |= {str(v) for v in _values(elem.value)}
    return found


def _structure(items: Sequence) -> list[object]:
    return [(item.get("RelationshipType"), item.get("ValueType"), _structure(item.get("ContentSequence", [])))
            for item in items]


def test_anonymize_structured_report_content_gets_dummy_values(dicomweb_client):
    original, _ = _store_file(dicomweb_client, "test-SR.dcm")
    got, body = anonymized(dicomweb_client, original)
    # Content Sequence is D in the Basic Profile (C only with the Clean Structured Content Option):
    # present, with nothing of the original content, the tree's structure kept.
    assert _structure(got.ContentSequence) == _structure(original.ContentSequence)
    secrets = {text for item in original.ContentSequence for text in _text_leaves(item)}
    secrets |= {str(item.VerifyingObserverName) for item in original.VerifyingObserverSequence}
    assert [s for s in secrets if len(s) > 4 and s.encode() in body] == []
    assert got.ContentDate and got.ContentDate != original.ContentDate  # Type 1 in SR: a dummy


def test_anonymize_type1_conditional_attributes_get_dummies(dicomweb_client):
    # Enhanced MR: Content Date/Time are Type 1 (PS3.3 C.7.6.16), Device Serial Number is Type 1
    # (C.7.5.2), Acquisition DateTime 1C (C.8.13.1), Contrast/Bolus Agent Type 2 (C.7.6.4).
    values = {"ContentDate": "20240102", "ContentTime": "101800", "DeviceSerialNumber": "SN-123",
              "AcquisitionDateTime": "20240102101700", "ContrastBolusAgent": ""}
    ds = make_dataset(sop_class_uid="1.2.840.10008.5.1.4.1.1.4.1", modality="MR", frames=2, **values)
    ds.SharedFunctionalGroupsSequence = Sequence([Dataset()])
    store(dicomweb_client, [ds])
    got, _ = anonymized(dicomweb_client, ds)
    for keyword, value in values.items():
        if value:
            assert got.get(keyword) and got.get(keyword) != value, keyword  # Z/D, X/Z/D: D
        else:
            assert keyword in got and not got.get(keyword), keyword  # an empty Type 2 stays empty


def test_anonymize_removes_or_replaces_what_the_table_misses(dicomweb_client):
    source = new_uid()
    breed = Dataset()
    breed.BreedRegistrationNumber = "HERD-4711"
    breed.BreedRegistryCodeSequence = Sequence()
    encrypted = Dataset()
    encrypted.EncryptedContentTransferSyntaxUID = "1.2.840.10008.1.2.1"
    encrypted.EncryptedContent = b"\x01\x02\x03\x04"
    fiducial = Dataset()
    fiducial.FiducialUID = new_uid()
    ds = make_dataset(EvaluatorName="Eval^Uator", PatientBirthDateInAlternativeCalendar="5784-01-01",
                      SOPInstanceUIDOfConcatenationSource=source, BreedRegistrationSequence=Sequence([breed]),
                      EncryptedAttributesSequence=Sequence([encrypted]), ReferencedFiducialUID=fiducial.FiducialUID)
    ds.FiducialSetSequence = Sequence([Dataset()])
    ds.FiducialSetSequence[0].FiducialSequence = Sequence([fiducial])
    ds.add_new(0x0018FF01, "LO", "not in the dictionary")
    assert not dictionary_has_tag(0x0018FF01)
    store(dicomweb_client, [ds])
    got, body = anonymized(dicomweb_client, ds)
    assert 0x0018FF01 not in got  # unknown public attribute: cannot be known safe
    assert got.EvaluatorName and got.EvaluatorName != ds.EvaluatorName  # a person name is identifying
    assert "PatientBirthDateInAlternativeCalendar" not in got and "EncryptedAttributesSequence" not in got
    assert got.BreedRegistrationSequence[0].BreedRegistrationNumber not in ("", "HERD-4711")
    assert is_valid_uid(got.SOPInstanceUIDOfConcatenationSource) and source.encode() not in body
    new_fiducial = got.FiducialSetSequence[0].FiducialSequence[0].FiducialUID
    assert got.ReferencedFiducialUID == new_fiducial != fiducial.FiducialUID  # references stay consistent


def test_deidentify_encapsulated_document_is_replaced_with_consistent_length():
    ds = make_dataset(sop_class_uid="1.2.840.10008.5.1.4.1.1.104.1", modality="DOC")
    document = b"%PDF-1.4 report for Doe^John "
    ds.EncapsulatedDocument = document
    ds.EncapsulatedDocumentLength = len(document)
    deidentify(ds)
    assert ds.EncapsulatedDocument and b"Doe^John" not in ds.EncapsulatedDocument
    assert ds.EncapsulatedDocumentLength == len(ds.EncapsulatedDocument)


def test_anonymize_burned_in_annotation_is_refused(dicomweb_client):
    ds = make_dataset(BurnedInAnnotation="YES")
    store(dicomweb_client, [ds])
    resp = dicomweb_client.get(wado_url(ds, contentType="application/dicom", anonymize="yes"), status=406)
    assert "BurnedInAnnotation" in resp.text


@pytest.mark.parametrize("value", ["no", "true", ""])
def test_anonymize_other_value_is_400(dicomweb_client, stored, value):
    resp = dicomweb_client.get(wado_url(stored, contentType="application/dicom", anonymize=value), status=400)
    assert "anonymize" in resp.text


def test_deidentify_same_salt_gives_same_uids():
    a = rich_dataset()
    b = pydicom.dcmread(io.BytesIO(dataset_bytes(a)))
    deidentify(a, salt=b"fixed")
    deidentify(b, salt=b"fixed")
    assert a.SOPInstanceUID == b.SOPInstanceUID and a.StudyInstanceUID == b.StudyInstanceUID


def test_deidentify_returns_the_uid_mapping():
    ds = rich_dataset()
    study = ds.StudyInstanceUID
    mapping = deidentify(ds)
    assert mapping[study] == ds.StudyInstanceUID
    assert len(set(mapping.values())) == len(mapping)
