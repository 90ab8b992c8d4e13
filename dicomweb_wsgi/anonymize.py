"""De-identification per the Basic Application Level Confidentiality Profile (PS3.15 Annex E).

Used by WADO-URI ``anonymize=yes`` (PS3.18 §9.4.1.2.1). ``deidentify`` applies the action codes
of PS3.15 Table E.1-1 (Basic Profile column, edition 2024b, held below as data: tag -> code) to
every attribute of the table, in the main data set and in every sequence item:

* ``X`` removes, ``Z`` empties, ``D`` puts a dummy value of the element's VR (a new UID for a UI),
  ``U`` replaces a UID with a new one: the same original UID always gives the same new UID within
  one call, so references inside the object stay consistent, and different calls give unrelated
  UIDs unless the caller passes the same ``salt``;
* ``D`` on a sequence keeps its items but leaves nothing of their content: attributes of the table
  get their own action, every other text, person name, date, time, number or binary value gets a
  dummy; code strings (value types, relationship types), attribute tags and UIDs that are not
  replaced stay, so that e.g. an SR content tree keeps a valid structure;
* conditional codes keep what the source shows to be possibly required: ``X/Z`` empties; ``X/D``
  puts a dummy, or removes an empty value; ``Z/D`` and ``X/Z/D`` keep an empty value empty and
  put a dummy in a non-empty one (such an attribute may be Type 1 in the object's IOD, e.g.
  Content Date in SR and enhanced multi-frame objects; a dummy is valid for every Type, PS3.15
  E.1.1 allowing any protected value to be replaced rather than removed); ``X/Z/U*`` keeps the
  referencing sequence with the instance UIDs in it replaced;
* private attributes, curve groups (50xx) and overlay planes (60xx) are removed: the table removes
  Overlay Data and Overlay Comments, and a plane left without its Type 1 Overlay Data would be an
  invalid Overlay Plane Module (PS3.3 C.9.2), so the whole group goes (the Retain Safe Private
  and Clean Graphics Options are not offered);
* attributes not in the table are kept (``K``; sequences cleaned recursively), except where they
  cannot be known safe: public attributes our data dictionary does not know, group lengths and
  File Meta elements in the data set body are removed, person names get a dummy, and a few
  identifying attributes the table does not list get an action (``_EXTRA_ACTIONS``);
* finally every UI value anywhere that equals a replaced UID gets the replacement.

Then Patient Identity Removed is YES, De-identification Method and its Code Sequence (CID 7050
``113100``) say what was done, and Longitudinal Temporal Information Modified is REMOVED.
``write_deidentified`` writes a new PS3.10 file whose File Meta Information is rebuilt around the
new SOP Instance UID (Media Storage SOP Instance UID is ``U`` in the table). Pixel data is never
touched: burned-in text is not cleaned, so callers refuse images marked Burned In Annotation YES.
"""
from __future__ import annotations

import os
import uuid
from typing import Any, BinaryIO, Callable

import pydicom
from pydicom.datadict import get_entry
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID

__all__ = ["BASIC_PROFILE", "IMPLEMENTATION_CLASS_UID", "deidentify", "write_deidentified",
           "has_burned_in_annotation"]


def _derived_uid(name: str) -> str:
    """A UID under 2.25 (PS3.5 B.2) from a name-based UUID: the same name, the same UID."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}"


IMPLEMENTATION_CLASS_UID = _derived_uid("dicomweb_wsgi implementation")
IMPLEMENTATION_VERSION_NAME = "DICOMWEB_WSGI"
METHOD_TEXT = "PS3.15 Basic Profile (Table E.1-1 2024b); pixel data not cleaned"

# PS3.15 Table E.1-1, Basic Profile column, by action code. The repeating groups of the table
# (curve data 50xx, overlay data and comments 60xx) and private attributes are handled by group.
_TABLE_E_1_1: dict[str, str] = {
    "D": """
        0008,0106 Context Group Version            0008,0107 Context Group Local Version
        0012,0010 Clinical Trial Sponsor Name      0012,0020 Clinical Trial Protocol ID
        0012,0040 Clinical Trial Subject ID        0012,0042 Clinical Trial Subject Reading ID
        0012,0081 Clinical Trial Protocol Ethics Committee Name
        0018,11BB Acquisition Field Of View Label  0018,9074 Frame Acquisition DateTime
        0018,9151 Frame Reference DateTime         0018,9367 X-Ray Source ID
        0018,9369 Source Start DateTime            0018,936A Source End DateTime
        0018,9371 X-Ray Detector ID                0018,9623 Functional Sync Pulse
        0018,9701 Decay Correction DateTime        0018,9804 Exclusion Start DateTime
        0034,0001 Flow Identifier Sequence         0034,0002 Flow Identifier
        0034,0005 Source Identifier                0034,0007 Frame Origin Timestamp
        003A,0314 Impedance Measurement DateTime   0040,0512 Container Identifier
        0040,0551 Specimen Identifier              0040,1101 Person Identification Code Sequence
        0040,A027 Verifying Organization           0040,A030 Verification DateTime
        0040,A073 Verifying Observer Sequence      0040,A075 Verifying Observer Name
        0040,A120 DateTime                         0040,A121 Date
        0040,A122 Time                             0040,A123 Person Name
        0040,A13A Referenced DateTime              0040,A730 Content Sequence
        0042,0011 Encapsulated Document            0044,0104 Assertion DateTime
        0068,6226 Effective DateTime               0068,6270 Information Issue DateTime
        006A,0003 Annotation Group UID             006A,0005 Annotation Group Label
        0070,0001 Graphic Annotation Sequence      0072,000A Hanging Protocol Creation DateTime
        0072,005E Selector AE Value                0072,005F Selector AS Value
        0072,0061 Selector DA Value                0072,0063 Selector DT Value
        0072,0065 Selector OB Value                0072,0066 Selector LO Value
        0072,0068 Selector LT Value                0072,006A Selector PN Value
        0072,006B Selector TM Value                0072,006C Selector SH Value
        0072,006D Selector UN Value                0072,006E Selector ST Value
        0072,0070 Selector UT Value                0072,0071 Selector UR Value
        0400,0105 Digital Signature DateTime       0400,0115 Certificate of Signer
        0400,0562 Attribute Modification DateTime  0400,0563 Modifying System
        0400,0565 Reason for the Attribute Modification
        2100,0140 Destination AE                   3006,0002 Structure Set Label
        3008,0024 Treatment Control Point Date     3008,0025 Treatment Control Point Time
        3008,0162 Safe Position Exit Date          3008,0164 Safe Position Exit Time
        3008,0166 Safe Position Return Date        3008,0168 Safe Position Return Time
        300A,0002 RT Plan Label                    300A,022C Source Strength Reference Date
        300A,022E Source Strength Reference Time   300A,0608 Treatment Position Group Label
        300A,0619 Radiation Dose Identification Label
        300A,0623 Radiation Dose In-Vivo Measurement Label
        300A,062A RT Tolerance Set Label           300A,067C Radiation Generation Mode Label
        300A,0734 Treatment Tolerance Violation Description
        300A,0736 Treatment Tolerance Violation DateTime
        300A,073A Recorded RT Control Point DateTime
        300A,0741 Interlock DateTime               300A,0742 Interlock Description
        300A,0760 Override DateTime                300A,0783 Interlock Origin Description
        300C,0127 Beam Hold Transition DateTime    3010,002D Device Label
        3010,0033 User Content Label               3010,0034 User Content Long Label
        3010,0035 Entity Label                     3010,0038 Entity Long Label
        3010,0054 RT Prescription Label
    """,
    "Z": """
        0008,0020 Study Date                       0008,0030 Study Time
        0008,0050 Accession Number                 0008,0090 Referring Physician's Name
        0008,009C Consulting Physician's Name      0010,0010 Patient's Name
        0010,0030 Patient's Birth Date             0010,0040 Patient's Sex
        0012,0021 Clinical Trial Protocol Name     0012,0030 Clinical Trial Site ID
        0012,0031 Clinical Trial Site Name         0012,0050 Clinical Trial Time Point ID
        0012,0060 Clinical Trial Coordinating Center Name
        0018,1203 Calibration DateTime             0020,0010 Study ID
        0040,0513 Issuer of the Container Identifier Sequence
        0040,0562 Issuer of the Specimen Identifier Sequence
        0040,0610 Specimen Preparation Sequence    0040,2016 Placer Order Number / Imaging Service Request
        0040,2017 Filler Order Number / Imaging Service Request
        0040,A082 Participation DateTime           0040,A088 Verifying Observer Identification Code Sequence
        0400,0564 Source of Previous Values        3006,0008 Structure Set Date
        3006,0009 Structure Set Time               3006,0026 ROI Name
        3006,00A6 ROI Interpreter                  300A,0611 RT Accessory Holder Slot ID
        300A,0615 RT Accessory Device Slot ID      300A,067D Radiation Generation Mode Description
        300E,0004 Review Date                      300E,0005 Review Time
        3010,000F Conceptual Volume Combination Description
        3010,0017 Conceptual Volume Description    3010,001B Device Alternate Identifier
        3010,0043 Manufacturer's Device Identifier 3010,005A RT Physician Intent Narrative
        3010,005C Reason for Superseding           3010,007A Treatment Technique Notes
        3010,007B Prescription Notes               3010,007F Fractionation Notes
        3010,0081 Prescription Notes Sequence
    """,
    "X": """
        0000,1000 Affected SOP Instance UID        0008,0015 Instance Coercion DateTime
        0008,0024 Overlay Date                     0008,0025 Curve Date
        0008,0034 Overlay Time                     0008,0035 Curve Time
        0008,0054 Retrieve AE Title                0008,0055 Station AE Title
        0008,0081 Institution Address              0008,0092 Referring Physician's Address
        0008,0094 Referring Physician's Telephone Numbers
        0008,0096 Referring Physician Identification Sequence
        0008,009D Consulting Physician Identification Sequence
        0008,0201 Timezone Offset From UTC         0008,1000 Network ID
        0008,1030 Study Description                0008,103E Series Description
        0008,1040 Institutional Department Name    0008,1041 Institutional Department Type Code Sequence
        0008,1048 Physician(s) of Record           0008,1049 Physician(s) of Record Identification Sequence
        0008,1050 Performing Physician's Name      0008,1052 Performing Physician Identification Sequence
        0008,1060 Name of Physician(s) Reading Study
        0008,1062 Physician(s) Reading Study Identification Sequence
        0008,1080 Admitting Diagnoses Description  0008,1084 Admitting Diagnoses Code Sequence
        0008,1088 Pyramid Description              0008,1120 Referenced Patient Sequence
        0008,2111 Derivation Description           0008,4000 Identifying Comments
        0010,0021 Issuer of Patient ID             0010,0032 Patient's Birth Time
        0010,0050 Patient's Insurance Plan Code Sequence
        0010,0101 Patient's Primary Language Code Sequence
        0010,0102 Patient's Primary Language Modifier Code Sequence
        0010,1000 Other Patient IDs                0010,1001 Other Patient Names
        0010,1002 Other Patient IDs Sequence       0010,1005 Patient's Birth Name
        0010,1010 Patient's Age                    0010,1020 Patient's Size
        0010,1030 Patient's Weight                 0010,1040 Patient's Address
        0010,1050 Insurance Plan Identification    0010,1060 Patient's Mother's Birth Name
        0010,1080 Military Rank                    0010,1081 Branch of Service
        0010,1090 Medical Record Locator           0010,1100 Referenced Patient Photo Sequence
        0010,2000 Medical Alerts                   0010,2110 Allergies
        0010,2150 Country of Residence             0010,2152 Region of Residence
        0010,2154 Patient's Telephone Numbers      0010,2155 Patient's Telecom Information
        0010,2160 Ethnic Group                     0010,2180 Occupation
        0010,21A0 Smoking Status                   0010,21B0 Additional Patient History
        0010,21C0 Pregnancy Status                 0010,21D0 Last Menstrual Date
        0010,21F0 Patient's Religious Preference   0010,2297 Responsible Person
        0010,2299 Responsible Organization         0010,4000 Patient Comments
        0012,0022 Issuer of Clinical Trial Protocol ID
        0012,0023 Other Clinical Trial Protocol IDs Sequence
        0012,0032 Issuer of Clinical Trial Site ID 0012,0041 Issuer of Clinical Trial Subject ID
        0012,0043 Issuer of Clinical Trial Subject Reading ID
        0012,0051 Clinical Trial Time Point Description
        0012,0055 Issuer of Clinical Trial Time Point ID
        0012,0071 Clinical Trial Series ID         0012,0072 Clinical Trial Series Description
        0012,0073 Issuer of Clinical Trial Series ID
        0012,0082 Clinical Trial Protocol Ethics Committee Approval Number
        0012,0086 Ethics Committee Approval Effectiveness Start Date
        0012,0087 Ethics Committee Approval Effectiveness End Date
        0014,407C Calibration Time                 0014,407E Calibration Date
        0016,002B Maker Note                       0016,004B Device Setting Description
        0016,004D Camera Owner Name                0016,004E Lens Specification
        0016,004F Lens Make                        0016,0050 Lens Model
        0016,0051 Lens Serial Number
        0016,0070 GPS Version ID                   0016,0071 GPS Latitude Ref
        0016,0072 GPS Latitude                     0016,0073 GPS Longitude Ref
        0016,0074 GPS Longitude                    0016,0075 GPS Altitude Ref
        0016,0076 GPS Altitude                     0016,0077 GPS Time Stamp
        0016,0078 GPS Satellites                   0016,0079 GPS Status
        0016,007A GPS Measure Mode                 0016,007B GPS DOP
        0016,007C GPS Speed Ref                    0016,007D GPS Speed
        0016,007E GPS Track Ref                    0016,007F GPS Track
        0016,0080 GPS Img Direction Ref            0016,0081 GPS Img Direction
        0016,0082 GPS Map Datum                    0016,0083 GPS Dest Latitude Ref
        0016,0084 GPS Dest Latitude                0016,0085 GPS Dest Longitude Ref
        0016,0086 GPS Dest Longitude               0016,0087 GPS Dest Bearing Ref
        0016,0088 GPS Dest Bearing                 0016,0089 GPS Dest Distance Ref
        0016,008A GPS Dest Distance                0016,008B GPS Processing Method
        0016,008C GPS Area Information             0016,008D GPS Date Stamp
        0016,008E GPS Differential
        0018,0027 Intervention Drug Stop Time      0018,0035 Intervention Drug Start Time
        0018,1004 Plate ID                         0018,1005 Generator ID
        0018,1007 Cassette ID                      0018,1008 Gantry ID
        0018,1009 Unique Device Identifier         0018,100A UDI Sequence
        0018,1012 Date of Secondary Capture        0018,1014 Time of Secondary Capture
        0018,1042 Contrast/Bolus Start Time        0018,1043 Contrast/Bolus Stop Time
        0018,1072 Radiopharmaceutical Start Time   0018,1073 Radiopharmaceutical Stop Time
        0018,1078 Radiopharmaceutical Start DateTime
        0018,1079 Radiopharmaceutical Stop DateTime
        0018,1200 Date of Last Calibration         0018,1201 Time of Last Calibration
        0018,1202 DateTime of Last Calibration     0018,1204 Date of Manufacture
        0018,1205 Date of Installation             0018,4000 Acquisition Comments
        0018,5011 Transducer Identification Sequence
        0018,9185 Respiratory Motion Compensation Technique Description
        0018,937B Multi-energy Acquisition Description
        0018,937F Decomposition Description        0018,9373 X-Ray Detector Label
        0018,9424 Acquisition Protocol Description 0018,9937 Requested Series Description
        0018,A002 Contribution DateTime            0018,A003 Contribution Description
        0020,0027 Pyramid Label                    0020,3401 Modifying Device ID
        0020,3403 Modified Image Date              0020,3405 Modified Image Time
        0020,3406 Modified Image Description       0020,4000 Image Comments
        0020,9158 Frame Comments                   0028,4000 Image Presentation Comments
        0032,0012 Study ID Issuer                  0032,0032 Study Verified Date
        0032,0033 Study Verified Time              0032,0034 Study Read Date
        0032,0035 Study Read Time                  0032,1000 Scheduled Study Start Date
        0032,1001 Scheduled Study Start Time       0032,1010 Scheduled Study Stop Date
        0032,1011 Scheduled Study Stop Time        0032,1020 Scheduled Study Location
        0032,1021 Scheduled Study Location AE Title
        0032,1030 Reason for Study                 0032,1032 Requesting Physician
        0032,1033 Requesting Service               0032,1040 Study Arrival Date
        0032,1041 Study Arrival Time               0032,1050 Study Completion Date
        0032,1051 Study Completion Time            0032,1066 Reason for Visit
        0032,1067 Reason for Visit Code Sequence   0032,1070 Requested Contrast Agent
        0032,4000 Study Comments
        0038,0004 Referenced Patient Alias Sequence
        0038,0010 Admission ID                     0038,0011 Issuer of Admission ID
        0038,0014 Issuer of Admission ID Sequence  0038,001A Scheduled Admission Date
        0038,001B Scheduled Admission Time         0038,001C Scheduled Discharge Date
        0038,001D Scheduled Discharge Time         0038,001E Scheduled Patient Institution Residence
        0038,0020 Admitting Date                   0038,0021 Admitting Time
        0038,0030 Discharge Date                   0038,0032 Discharge Time
        0038,0040 Discharge Diagnosis Description  0038,0050 Special Needs
        0038,0060 Service Episode ID               0038,0061 Issuer of Service Episode ID
        0038,0062 Service Episode Description      0038,0064 Issuer of Service Episode ID Sequence
        0038,0300 Current Patient Location         0038,0400 Patient's Institution Residence
        0038,0500 Patient State                    0038,4000 Visit Comments
        003A,0329 Waveform Filter Description      003A,032B Filter Lookup Table Description
        0040,0001 Scheduled Station AE Title       0040,0002 Scheduled Procedure Step Start Date
        0040,0003 Scheduled Procedure Step Start Time
        0040,0004 Scheduled Procedure Step End Date
        0040,0005 Scheduled Procedure Step End Time
        0040,0006 Scheduled Performing Physician's Name
        0040,0007 Scheduled Procedure Step Description
        0040,0009 Scheduled Procedure Step ID
        0040,000B Scheduled Performing Physician Identification Sequence
        0040,0010 Scheduled Station Name           0040,0011 Scheduled Procedure Step Location
        0040,0012 Pre-Medication                   0040,0241 Performed Station AE Title
        0040,0242 Performed Station Name           0040,0243 Performed Location
        0040,0244 Performed Procedure Step Start Date
        0040,0245 Performed Procedure Step Start Time
        0040,0250 Performed Procedure Step End Date
        0040,0251 Performed Procedure Step End Time
        0040,0253 Performed Procedure Step ID      0040,0254 Performed Procedure Step Description
        0040,0275 Request Attributes Sequence      0040,0280 Comments on the Performed Procedure Step
        0040,0310 Comments on Radiation Dose       0040,050A Specimen Accession Number
        0040,051A Container Description            0040,0600 Specimen Short Description
        0040,0602 Specimen Detailed Description    0040,06FA Slide Identifier
        0040,1001 Requested Procedure ID           0040,1002 Reason for the Requested Procedure
        0040,1004 Patient Transport Arrangements   0040,1005 Requested Procedure Location
        0040,100A Reason for Requested Procedure Code Sequence
        0040,1010 Names of Intended Recipients of Results
        0040,1011 Intended Recipients of Results Identification Sequence
        0040,1102 Person's Address                 0040,1103 Person's Telephone Numbers
        0040,1104 Person's Telecom Information     0040,1400 Requested Procedure Comments
        0040,2001 Reason for the Imaging Service Request
        0040,2004 Issue Date of Imaging Service Request
        0040,2005 Issue Time of Imaging Service Request
        0040,2008 Order Entered By                 0040,2009 Order Enterer's Location
        0040,2010 Order Callback Phone Number      0040,2011 Order Callback Telecom Information
        0040,2400 Imaging Service Request Comments
        0040,3001 Confidentiality Constraint on Patient Data Description
        0040,4005 Scheduled Procedure Step Start DateTime
        0040,4008 Scheduled Procedure Step Expiration DateTime
        0040,4010 Scheduled Procedure Step Modification DateTime
        0040,4011 Expected Completion DateTime
        0040,4025 Scheduled Station Name Code Sequence
        0040,4027 Scheduled Station Geographic Location Code Sequence
        0040,4028 Performed Station Name Code Sequence
        0040,4030 Performed Station Geographic Location Code Sequence
        0040,4034 Scheduled Human Performers Sequence
        0040,4035 Actual Human Performers Sequence 0040,4036 Human Performer's Organization
        0040,4037 Human Performer's Name
        0040,4050 Performed Procedure Step Start DateTime
        0040,4051 Performed Procedure Step End DateTime
        0040,4052 Procedure Step Cancellation DateTime
        0040,A023 Findings Group Recording Date (Trial)
        0040,A024 Findings Group Recording Time (Trial)
        0040,A033 Observation Start DateTime       0040,A078 Author Observer Sequence
        0040,A07A Participant Sequence             0040,A07C Custodial Organization Sequence
        0040,A110 Date of Document or Verbal Transaction (Trial)
        0040,A112 Time of Document Creation or Verbal Transaction (Trial)
        0040,A192 Observation Date (Trial)         0040,A193 Observation Time (Trial)
        0040,A307 Current Observer (Trial)         0040,A352 Verbal Source (Trial)
        0040,A353 Address (Trial)                  0040,A354 Telephone Number (Trial)
        0040,A358 Verbal Source Identifier Code Sequence (Trial)
        0040,DB06 Template Version                 0040,DB07 Template Local Version
        0040,E004 HL7 Document Effective Time      0044,0004 Approval Status DateTime
        0044,000B Product Expiration DateTime      0044,0010 Substance Administration DateTime
        0044,0105 Assertion Expiration DateTime    0050,001B Container Component ID
        0050,0020 Device Description               0050,0021 Long Device Description
        006A,0006 Annotation Group Description     0070,0082 Presentation Creation Date
        0070,0083 Presentation Creation Time
        0070,0086 Content Creator's Identification Code Sequence
        0074,1234 Receiving AE                     0074,1236 Requesting AE
        0088,0200 Icon Image Sequence              0088,0904 Topic Title
        0088,0906 Topic Subject                    0088,0910 Topic Author
        0088,0912 Topic Keywords                   0100,0420 SOP Authorization DateTime
        0400,0310 Certified Timestamp              0400,0402 Referenced Digital Signature Sequence
        0400,0403 Referenced SOP Instance MAC Sequence
        0400,0404 MAC                              0400,0550 Modified Attributes Sequence
        0400,0551 Nonconforming Modified Attributes Sequence
        0400,0552 Nonconforming Data Element Value 0400,0561 Original Attributes Sequence
        0400,0600 Instance Origin Status           2030,0020 Text String
        2100,0040 Creation Date                    2100,0050 Creation Time
        2100,0070 Originator                       3002,0121 Position Acquisition Template Name
        3002,0123 Position Acquisition Template Description
        3006,0004 Structure Set Name               3006,0006 Structure Set Description
        3006,0028 ROI Description                  3006,002D ROI DateTime
        3006,002E ROI Observation DateTime         3006,0038 ROI Generation Description
        3006,004D ROI Creator Sequence             3006,004E ROI Interpreter Sequence
        3006,0085 ROI Observation Label            3006,0088 ROI Observation Description
        300A,0003 RT Plan Name                     300A,0004 RT Plan Description
        300A,000B Treatment Sites                  300A,000E Prescription Description
        300A,0016 Dose Reference Description       300A,0072 Fraction Group Description
        300A,00C3 Beam Description                 300A,00DD Bolus Description
        300A,0196 Fixation Device Description      300A,01A6 Shielding Device Description
        300A,01B2 Setup Technique Description      300A,0216 Source Manufacturer
        300A,02EB Compensator Description          300A,0676 Equipment Frame of Reference Description
        300A,078E Patient Treatment Preparation Procedure Parameter Description
        300A,0792 Patient Treatment Preparation Method Description
        300A,0794 Patient Setup Photo Description  300A,079A Displacement Reference Label
        300C,0113 Reason for Omission Description  3010,0036 Entity Name
        3010,0037 Entity Description               3010,0061 Prior Treatment Dose Description
        3010,0085 Intended Fraction Start Time     4000,0010 Arbitrary
        4000,4000 Text Comments                    4008,0040 Results ID
        4008,0042 Results ID Issuer                4008,0100 Interpretation Recorded Date
        4008,0101 Interpretation Recorded Time     4008,0102 Interpretation Recorder
        4008,0108 Interpretation Transcription Date
        4008,0109 Interpretation Transcription Time
        4008,010A Interpretation Transcriber       4008,010B Interpretation Text
        4008,010C Interpretation Author            4008,0111 Interpretation Approver Sequence
        4008,0112 Interpretation Approval Date     4008,0113 Interpretation Approval Time
        4008,0114 Physician Approving Interpretation
        4008,0115 Interpretation Diagnosis Description
        4008,0118 Results Distribution List Sequence
        4008,0119 Distribution Name                4008,011A Distribution Address
        4008,0200 Interpretation ID                4008,0202 Interpretation ID Issuer
        4008,0300 Impressions                      4008,4000 Results Comments
        FFFA,FFFA Digital Signatures Sequence      FFFC,FFFC Data Set Trailing Padding
    """,
    "U": """
        0000,1001 Requested SOP Instance UID       0002,0003 Media Storage SOP Instance UID
        0004,1511 Referenced SOP Instance UID in File
        0008,0014 Instance Creator UID             0008,0017 Acquisition UID
        0008,0018 SOP Instance UID                 0008,0019 Pyramid UID
        0008,0058 Failed SOP Instance UID List     0008,1155 Referenced SOP Instance UID
        0008,1195 Transaction UID                  0008,3010 Irradiation Event UID
        0018,1002 Device UID                       0018,100B Manufacturer's Device Class UID
        0018,2042 Target UID                       0020,000D Study Instance UID
        0020,000E Series Instance UID              0020,0052 Frame of Reference UID
        0020,0200 Synchronization Frame of Reference UID
        0020,9161 Concatenation UID                0020,9164 Dimension Organization UID
        0028,1199 Palette Color Lookup Table UID   0028,1214 Large Palette Color Lookup Table UID
        003A,0310 Multiplex Group UID              0040,0554 Specimen UID
        0040,4023 Referenced General Purpose Scheduled Procedure Step Transaction UID
        0040,A124 UID                              0040,A171 Observation UID
        0040,A172 Referenced Observation UID (Trial)
        0040,A402 Observation Subject UID (Trial)  0040,DB0C Template Extension Organization UID
        0040,DB0D Template Extension Creator UID   0062,0021 Tracking UID
        0064,0003 Source Frame of Reference UID    0070,031A Fiducial UID
        0070,1101 Presentation Display Collection UID
        0070,1102 Presentation Sequence Collection UID
        0088,0140 Storage Media File-set UID       0400,0100 Digital Signature UID
        3006,0024 Referenced Frame of Reference UID
        3006,00C2 Related Frame of Reference UID   300A,0013 Dose Reference UID
        300A,0083 Referenced Dose Reference UID    300A,0609 Treatment Position Group UID
        300A,0650 Patient Setup UID                300A,0700 Treatment Session UID
        300A,0785 Referenced Treatment Position Group UID
        3010,0006 Conceptual Volume UID            3010,000B Referenced Conceptual Volume UID
        3010,0013 Constituent Conceptual Volume UID
        3010,0015 Source Conceptual Volume UID     3010,0031 Referenced Fiducials UID
        3010,003B RT Treatment Phase UID           3010,006E Dosimetric Objective UID
        3010,006F Referenced Dosimetric Objective UID
    """,
    "Z/D": """
        0008,0023 Content Date                     0008,0033 Content Time
        0010,0020 Patient ID                       0018,0010 Contrast/Bolus Agent
        0018,9919 Instruction Performed DateTime   0070,0084 Content Creator's Name
    """,
    "X/Z": """
        0008,0022 Acquisition Date                 0008,0032 Acquisition Time
        0008,1110 Referenced Study Sequence        0010,2203 Patient's Sex Neutered
        0032,1060 Requested Procedure Description  0040,0555 Acquisition Context Sequence
        2200,0002 Label Text                       2200,0005 Barcode Value
        3008,0105 Source Serial Number             300A,00B2 Treatment Machine Name
        300E,0008 Reviewer Name
    """,
    "X/D": """
        0008,0012 Instance Creation Date           0008,0021 Series Date
        0008,0031 Series Time                      0008,1072 Operator Identification Sequence
        0018,1030 Protocol Name                    0018,1400 Acquisition Device Processing Description
        0018,700A Detector ID                      0018,700C Date of Last Detector Calibration
        0018,700E Time of Last Detector Calibration
        0018,9516 Start Acquisition DateTime       0018,9517 End Acquisition DateTime
        0040,A032 Observation DateTime             3008,0054 First Treatment Date
        3008,0056 Most Recent Treatment Date       3008,0250 Treatment Date
        3008,0251 Treatment Time                   300A,0006 RT Plan Date
        300A,0007 RT Plan Time                     3010,004C Intended Phase Start Date
        3010,004D Intended Phase End Date          3010,0056 RT Treatment Approach Label
        3010,0077 Treatment Site
    """,
    "X/Z/D": """
        0008,0013 Instance Creation Time           0008,002A Acquisition DateTime
        0008,0080 Institution Name                 0008,0082 Institution Code Sequence
        0008,1010 Station Name                     0008,1070 Operators' Name
        0008,1111 Referenced Performed Procedure Step Sequence
        0018,1000 Device Serial Number
    """,
    "X/Z/U*": """
        0008,1140 Referenced Image Sequence        0008,2112 Source Image Sequence
    """,
}

# Identifying attributes Table E.1-1 does not list (our decision, see the module docstring).
_EXTRA_ACTIONS: dict[str, str] = {
    "X": """
        0010,0033 Patient's Birth Date in Alternative Calendar
        0010,0034 Patient's Death Date in Alternative Calendar
        0400,0500 Encrypted Attributes Sequence
    """,
    "D": "0010,2295 Breed Registration Number",
    "U": """
        0008,1167 Multi-frame Source SOP Instance UID
        0008,3012 Radiopharmaceutical Administration Event UID
        0018,991E Target Frame of Reference UID    0020,0242 SOP Instance UID of Concatenation Source
        0020,9312 Volume Frame of Reference UID    0040,A021 Findings Group UID (Trial)
        0040,A022 Referenced Findings Group UID (Trial)
    """,
}


def _parse(table: dict[str, str]) -> dict[int, str]:
    """Turn ``code: "gggg,eeee Name  gggg,eeee Name ..."`` text into tag -> action code."""
    parsed: dict[int, str] = {}
    for code, text in table.items():
        for word in text.split():
            if len(word) == 9 and word[4] == ",":
                tag = int(word.replace(",", ""), 16)
                if tag in parsed:
                    raise RuntimeError(f"({word}) is listed twice in the profile table")
                parsed[tag] = code
    return parsed


BASIC_PROFILE: dict[int, str] = _parse(_TABLE_E_1_1)
_ACTIONS: dict[int, str] = {**_parse(_EXTRA_ACTIONS), **BASIC_PROFILE}

_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_ENCAPSULATED_DOCUMENT, _ENCAPSULATED_DOCUMENT_LENGTH = 0x00420011, 0x00420015
_DUMMY_TEXT = "ANONYMIZED"
_DUMMY_BYTES = b"\x00" * 8  # a whole number of units for OB, OW, OF, OL, OD, OV and UN
_DUMMIES: dict[str, Any] = {
    "DA": "19000101", "TM": "000000", "DT": "19000101000000", "AS": "000Y",
    "DS": "0", "IS": "0", "US": 0, "SS": 0, "UL": 0, "SL": 0, "UV": 0, "SV": 0,
    "FL": 0.0, "FD": 0.0, "OB": _DUMMY_BYTES, "OW": _DUMMY_BYTES, "OF": _DUMMY_BYTES,
    "OL": _DUMMY_BYTES, "OD": _DUMMY_BYTES, "OV": _DUMMY_BYTES, "UN": _DUMMY_BYTES,
}
# Values a dummied sequence keeps: enumerated structure (value and relationship types), tags, UIDs
# (instance UIDs among them are replaced by their own U action or the final UID pass).
_STRUCTURAL_VRS = frozenset({"CS", "AT", "UI"})


def _is_empty(elem: DataElement) -> bool:
    value = elem.value
    if elem.VR == "SQ":
        return not value
    if isinstance(value, (list, tuple, MultiValue)):
        return all(v in (None, "", b"") for v in value)
    return value in (None, "", b"")


def _known_public(tag: int) -> bool:
    try:
        get_entry(tag)
    except KeyError:
        return False
    return True


class _Deidentifier:
    """One de-identification: holds the UID mapping so replacements are consistent."""

    def __init__(self, salt: bytes) -> None:
        self.salt = salt.hex()
        self.uids: dict[str, str] = {}

    def new_uid(self, uid: str) -> str:
        uid = uid.strip().rstrip("\x00")
        if uid not in self.uids:
            self.uids[uid] = _derived_uid(f"{self.salt}:{uid}")
        return self.uids[uid]

    def clean(self, ds: Dataset, dummy: bool = False) -> None:
        """Apply the profile to ``ds``; ``dummy`` when ``ds`` is an item of a ``D`` sequence."""
        for tag in list(ds.keys()):
            tag = int(tag)
            group, element = tag >> 16, tag & 0xFFFF
            if (group % 2 == 1 or element == 0 or group == 0x0002
                    or 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF):
                del ds[tag]
                continue
            if tag in _PIXEL_TAGS and not dummy:
                continue
            code = _ACTIONS.get(tag)
            if code is not None:
                self.apply(ds, tag, self.resolve(code, ds[tag]))
            elif not _known_public(tag):
                del ds[tag]
            else:
                self.keep(ds[tag], dummy)

    def clean_items(self, elem: DataElement, dummy: bool) -> None:
        for item in elem.value or ():
            self.clean(item, dummy)

    @staticmethod
    def resolve(code: str, elem: DataElement) -> str:
        """The action a conditional code takes here (see the module docstring)."""
        empty = _is_empty(elem)
        if code == "X/Z":
            return "Z"
        if code == "X/D":
            return "X" if empty else "D"
        if code in ("Z/D", "X/Z/D"):
            return "Z" if empty else "D"
        if code == "X/Z/U*":
            return "K"
        return code

    def apply(self, ds: Dataset, tag: int, action: str) -> None:
        elem = ds[tag]
        if action == "X":
            del ds[tag]
        elif action == "Z":
            elem.value = Sequence() if elem.VR == "SQ" else None
        elif action == "U" and elem.VR == "UI":
            self.replace_uids(elem)
        elif action in ("D", "U"):
            if elem.VR == "SQ":
                self.clean_items(elem, dummy=True)
            elif elem.VR == "UI":
                self.replace_uids(elem)
            elif not _is_empty(elem):
                self.put_dummy(elem)
        elif elem.VR == "SQ":  # "K": keep, cleaning the items
            self.clean_items(elem, dummy=False)

    def keep(self, elem: DataElement, dummy: bool) -> None:
        """An attribute the table does not list: kept, unless it cannot be known safe."""
        if elem.VR == "SQ":
            self.clean_items(elem, dummy)
        elif _is_empty(elem) or (dummy and elem.VR in _STRUCTURAL_VRS):
            return
        elif dummy or elem.VR == "PN":
            self.put_dummy(elem)

    def replace_uids(self, elem: DataElement) -> None:
        values = elem.value
        if isinstance(values, (list, tuple, MultiValue)):
            elem.value = [self.new_uid(str(v)) if v else v for v in values]
        elif values:
            elem.value = self.new_uid(str(values))

    @staticmethod
    def put_dummy(elem: DataElement) -> None:
        """A value consistent with the VR, keeping the number of values (VM)."""
        vr = elem.VR.split(" or ")[0]  # an ambiguous VR ("US or SS") pydicom could not settle
        if vr == "UI":
            return
        dummy = _DUMMIES.get(vr, _DUMMY_TEXT)
        if isinstance(elem.value, (list, tuple, MultiValue)) and not isinstance(dummy, bytes):
            elem.value = [dummy] * len(elem.value)
        else:
            elem.value = dummy

    def map_remaining_uids(self, ds: Dataset) -> None:
        """Any UI value equal to a replaced UID, wherever it is, gets the same replacement."""
        for elem in ds:
            if elem.VR == "SQ":
                for item in elem.value or ():
                    self.map_remaining_uids(item)
            elif elem.VR == "UI" and elem.value:
                values = elem.value
                if isinstance(values, (list, tuple, MultiValue)):
                    elem.value = [self.uids.get(str(v).strip(), v) for v in values]
                else:
                    elem.value = self.uids.get(str(values).strip(), values)


def has_burned_in_annotation(ds: Dataset) -> bool:
    """True when the image says identifying text may be burned into its pixels."""
    return str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES"


def deidentify(ds: Dataset, salt: bytes | None = None) -> dict[str, str]:
    """De-identify ``ds`` in place; returns the UID mapping used (original -> new).

    ``salt`` seeds the UID replacements: the same salt and UID give the same new UID, so a caller
    de-identifying a set of instances with one salt keeps their references consistent; by default
    a fresh random salt, so two calls cannot be linked through their UIDs.
    """
    worker = _Deidentifier(salt if salt is not None else os.urandom(16))
    worker.clean(ds)
    worker.map_remaining_uids(ds)
    document = ds.get(_ENCAPSULATED_DOCUMENT)
    if document is not None and _ENCAPSULATED_DOCUMENT_LENGTH in ds:
        ds[_ENCAPSULATED_DOCUMENT_LENGTH].value = len(document.value or b"")
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD_TEXT
    code = Dataset()
    code.CodeValue = "113100"
    code.CodingSchemeDesignator = "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    ds.DeidentificationMethodCodeSequence = Sequence([code])
    ds.LongitudinalTemporalInformationModified = "REMOVED"
    return dict(worker.uids)


def write_deidentified(read: Callable[[], Dataset], transfer_syntax: str, out: BinaryIO,
                       salt: bytes | None = None) -> None:
    """Read a data set (already in ``transfer_syntax``), de-identify it and write it to ``out``
    as a PS3.10 file with new File Meta Information (none of the original's, e.g. its Source
    Application Entity Title, carried over) and a zero preamble."""
    ds = read()
    deidentify(ds, salt)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", "")
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "")
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta
    ds.preamble = None
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
